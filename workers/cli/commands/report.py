"""`emostream report CALL_ID [--json] [--plot PNG]`: a call's emotion summary from Redis.

Reads what the analytics plugin keeps (`emo:v1:call:{<call id>}:timeline` and `:alerts`, see
`emostream.plugins.analytics`): segments, share of time per emotion per channel, escalation alerts.
`--plot PNG` draws the call's timeline: one row per channel, one bar per segment coloured by its
label, alerts shaded. Exit code 1 when Redis has no such call.
"""

import argparse
import sys
from pathlib import Path

PLOT_WIDTH_IN = 12.0
PLOT_ROW_HEIGHT_IN = 0.9


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "report",
        help="summary and timeline plot of one call's emotions (from Redis)",
        description=(
            "Print a call's emotion summary kept by the analytics plugin: segments, share of time per "
            "emotion per channel, escalation alerts. Redis comes from EMOSTREAM_REDIS__URL."
        ),
    )
    parser.add_argument("call_id", metavar="CALL_ID", help="the call id (a stream id without its :channel)")
    parser.add_argument("--json", action="store_true", help="the full summary as JSON (timeline included)")
    parser.add_argument("--plot", metavar="PNG", type=Path, default=None, help="also draw the timeline to this PNG")
    parser.add_argument("--redis-url", default=None, help="redis://host:port/db (default: settings)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from emostream.plugins.analytics import load_call_summary, summary_as_json, summary_as_text
    from emostream.plugins.connections import async_redis_client
    from emostream.schemas.redaction import redact_url
    from emostream.schemas.settings import Settings

    settings = Settings()

    async def load():
        redis = async_redis_client(settings.redis, plugin="report", url=args.redis_url)
        try:
            return await load_call_summary(redis, settings.redis.key_prefix, args.call_id)
        finally:
            await redis.aclose()

    try:
        summary = asyncio.run(load())
    except OSError as error:
        print(f"emostream report: cannot reach Redis at {redact_url(args.redis_url or settings.redis.url)}: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # noqa: BLE001 - redis errors (ConnectionError is not an OSError), bad JSON
        print(f"emostream report: reading call {args.call_id!r} failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    if summary is None:
        print(
            f"emostream report: no call {args.call_id!r} in Redis at {redact_url(args.redis_url or settings.redis.url)} "
            "(is the analytics plugin configured? calls expire after its retention_s)",
            file=sys.stderr,
        )
        return 1
    print(summary_as_json(summary) if args.json else summary_as_text(summary))
    if args.plot is not None:
        plot_timeline(summary, args.plot)
        if not args.json:
            print(f"timeline plot: {args.plot}")
    return 0


def plot_timeline(summary, path: Path) -> None:
    """Draw one row per channel, one bar per segment coloured by label; alerts shaded in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    streams = [stream.stream_id for stream in summary.streams]
    labels = sorted({segment.label for segment in summary.timeline})
    colours = {label: plt.get_cmap("tab10")(index % 10) for index, label in enumerate(labels)}
    figure, axes = plt.subplots(figsize=(PLOT_WIDTH_IN, 1.5 + PLOT_ROW_HEIGHT_IN * len(streams)))
    for row, stream_id in enumerate(streams):
        for segment in (item for item in summary.timeline if item.stream_id == stream_id):
            axes.broken_barh(
                [(segment.start_ms / 1000, segment.duration_ms / 1000)],
                (row - 0.35, 0.7),
                facecolors=colours[segment.label],
                alpha=0.4 + 0.6 * segment.score,
            )
    for alert in summary.alerts:
        row = streams.index(alert.stream_id) if alert.stream_id in streams else 0
        axes.axvspan(alert.start_ms / 1000, alert.end_ms / 1000, ymin=0, ymax=1, color="red", alpha=0.12)
        axes.annotate("escalation", (alert.start_ms / 1000, row + 0.42), color="red", fontsize=8)
    axes.set_yticks(range(len(streams)), [f"{s.stream_id} ({s.role.value})" for s in summary.streams])
    axes.set_ylim(-0.6, len(streams) - 0.4)
    axes.set_xlabel("call time (s)")
    axes.set_title(f"call {summary.call_id}: emotion timeline")
    axes.legend(handles=[Patch(color=colours[label], label=label) for label in labels], loc="upper left",
                bbox_to_anchor=(1.0, 1.0), fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":  # `python -m emostream.workers.cli.commands.report CALL_ID`
    _parser = argparse.ArgumentParser(prog="emostream")
    register(_parser.add_subparsers(dest="command", required=True))
    _args = _parser.parse_args(["report", *sys.argv[1:]])
    sys.exit(_args.handler(_args))
