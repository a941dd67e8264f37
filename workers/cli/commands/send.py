"""`emostream send FILE --stream-id ID`: stream a recording to the audio topic like a gateway would."""

import argparse
import sys
from pathlib import Path

from emostream.schemas.audio import (
    PIPELINE_SAMPLE_RATE_HZ,
    SUPPORTED_SAMPLE_RATES_HZ,
    AudioEncoding,
    ChannelRole,
)
from emostream.workers.cli.commands._kafka_args import add_kafka_arguments, broker_unreachable, settings_from_args

G711_SAMPLE_RATE_HZ = 8_000
WIDEBAND_SAMPLE_RATE_HZ = PIPELINE_SAMPLE_RATE_HZ  # s16le default: no resampling in the VAD stage


def register(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "send",
        help="stream a WAV/FLAC recording to the audio topic as a gateway would",
        description=(
            "Read a recording (WAV, FLAC, anything libsndfile reads), mix to mono, resample to --rate, "
            "encode, and send it to the audio topic in chunks keyed by the stream id, with text headers "
            "(v, seq, rate, enc, role, ts_ms, eos) and a final empty end-of-stream chunk. Broker and "
            "topic come from EMOSTREAM_KAFKA__BOOTSTRAP_SERVERS / EMOSTREAM_TOPICS__AUDIO unless given."
        ),
    )
    parser.add_argument("file", type=Path, help="the recording")
    parser.add_argument(
        "--stream-id",
        required=True,
        help="call id + channel, e.g. call-42:customer (the record key)",
    )
    parser.add_argument(
        "--realtime", action="store_true", help="pace chunks in real time, as a live call"
    )
    parser.add_argument(
        "--chunk-ms", type=int, default=20, help="audio per record, 10-1000 ms (default 20)"
    )
    parser.add_argument(
        "--encoding",
        choices=[encoding.value for encoding in AudioEncoding],
        default=AudioEncoding.S16LE.value,
        help="sample encoding on the wire (default s16le)",
    )
    parser.add_argument(
        "--rate",
        type=int,
        choices=SUPPORTED_SAMPLE_RATES_HZ,
        default=None,
        metavar="HZ",
        help="sample rate on the wire (default 16000 for s16le, 8000 for mulaw/alaw)",
    )
    parser.add_argument(
        "--role", choices=[role.value for role in ChannelRole], default=ChannelRole.CUSTOMER.value
    )
    add_kafka_arguments(parser, "audio")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from emostream.schemas.audio import AudioChunkHeader
    from emostream.workers.cli.clients.producer import (
        AudioFileError,
        SendError,
        load_recording,
        make_audio_producer,
        send_recording,
    )
    from kafka.errors import KafkaError
    from pydantic import ValidationError

    encoding = AudioEncoding(args.encoding)
    sample_rate_hz = args.rate or (
        WIDEBAND_SAMPLE_RATE_HZ if encoding is AudioEncoding.S16LE else G711_SAMPLE_RATE_HZ
    )
    try:
        AudioChunkHeader(stream_id=args.stream_id, seq=0, rate=sample_rate_hz)
    except ValidationError:
        print(
            f"emostream send: stream id {args.stream_id!r} not allowed: use 1-128 of A-Z a-z 0-9 . _ : @ / + -",
            file=sys.stderr,
        )
        return 2
    settings = settings_from_args(args)
    topic = args.topic or settings.topics.audio
    try:
        samples = load_recording(args.file, sample_rate_hz=sample_rate_hz)
    except AudioFileError as error:
        print(f"emostream send: {error}", file=sys.stderr)
        return 2
    try:
        producer = make_audio_producer(settings)
    except KafkaError as error:
        print(broker_unreachable("send", settings, error), file=sys.stderr)
        return 1
    try:
        report = send_recording(
            producer,
            topic=topic,
            stream_id=args.stream_id,
            samples=samples,
            sample_rate_hz=sample_rate_hz,
            encoding=encoding,
            role=ChannelRole(args.role),
            chunk_ms=args.chunk_ms,
            realtime=args.realtime,
        )
    except (SendError, ValueError) as error:
        print(f"emostream send: {error}", file=sys.stderr)
        return 1
    finally:
        producer.close()
    print(
        f"sent stream {report.stream_id}: {report.chunks} chunks + end-of-stream, {report.audio_ms / 1000:.2f} s of "
        f"{encoding.value} {sample_rate_hz} Hz audio ({report.bytes_sent} bytes) to {topic} at "
        f"{settings.kafka.bootstrap_servers} in {report.wall_s:.2f} s"
    )
    return 0
