"""`emostream tail [--stream-id ID] [--json]`: print emotion results as they arrive."""

import argparse
import sys

from emostream.workers.cli.commands._kafka_args import add_kafka_arguments, broker_unreachable, settings_from_args


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "tail",
        help="print emotion results from the emotions topic as they arrive",
        description=(
            "Print EmotionEvent results from the emotions topic. Reads every partition from its start "
            "without a consumer group and shows only results stamped after tail started (minus 2 s for "
            "clock skew), or all of them with --from-beginning. It never asks the broker for end offsets "
            "(Tansu, the local broker, reports them wrongly), so a start reads the topic's history once."
        ),
    )
    parser.add_argument("--stream-id", default=None, help="only results of this stream")
    parser.add_argument("--json", action="store_true", help="one EmotionEvent JSON object per line")
    parser.add_argument(
        "--from-beginning", action="store_true", help="also results produced before tail started"
    )
    parser.add_argument("--max-events", type=int, default=None, help="exit after this many results")
    parser.add_argument(
        "--timeout-s", type=float, default=None, help="exit after this many seconds"
    )
    parser.add_argument(
        "--idle-timeout-s", type=float, default=None, help="exit after this long without a result"
    )
    add_kafka_arguments(parser, "emotions")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from emostream.workers.cli.clients.tail import (
        BadResult,
        TailFilter,
        default_since_ms,
        format_event,
        iter_events,
        make_tail_consumer,
    )

    from kafka.errors import KafkaError

    since_ms = None if args.from_beginning else default_since_ms()
    settings = settings_from_args(args)
    topic = args.topic or settings.topics.emotions
    wait_s = args.timeout_s if args.timeout_s is not None else 30.0
    try:
        consumer = make_tail_consumer(settings, topic=topic, wait_s=wait_s)
    except LookupError as error:
        print(f"emostream tail: {error}", file=sys.stderr)
        return 1
    except KafkaError as error:
        print(broker_unreachable("tail", settings, error), file=sys.stderr)
        return 1
    printed = 0
    try:
        selection = TailFilter(stream_id=args.stream_id, since_ms=since_ms)
        for item in iter_events(
            consumer,
            selection=selection,
            timeout_s=args.timeout_s,
            idle_timeout_s=args.idle_timeout_s,
        ):
            if isinstance(item, BadResult):
                print(
                    f"emostream tail: {topic} partition {item.partition} offset {item.offset}: not an EmotionEvent: {item.problem}",
                    file=sys.stderr,
                )
                continue
            print(item.model_dump_json() if args.json else format_event(item), flush=True)
            printed += 1
            if args.max_events is not None and printed >= args.max_events:
                break
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0
