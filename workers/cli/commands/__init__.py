"""Sub-commands of the `emostream` console command."""
