"""The runtime the stages share: faust app, Kafka and Redis clients, codecs, topics, result store,
dead letters, metrics, stage names. Imports nothing from `stages`, `stack` or `cli`."""
