"""The streams benchmark's counting, without a stack: matching planned utterances to results one to
one, duplicates, unmatched and missing results, the Redis / topic cross-check, and its statistics
(benchmarks/streams_benchmark.py). Hand-made utterances and results; nothing is started."""

from pathlib import Path

import pytest
from emostream.schemas.event import EmotionEvent, LatencyBreakdown
from emostream.workers.runtime.metrics import WorkerMetrics
from prometheus_client import generate_latest

from tests._benchmark_helpers import load_benchmark

bench = load_benchmark("streams_benchmark")
Utterance, SegmentResult = bench.Utterance, bench.SegmentResult
SPLIT_PARTS = ("endpoint", "send_late", "to_vad")  # audio_to_vad, where the closing chunk is known


def result(
    stream_id: str, index: int, start_ms: float, end_ms: float, received_at_ms: float | None = None
):
    return SegmentResult(stream_id, index, start_ms, end_ms, received_at_ms=received_at_ms)


def test_a_segment_spanning_two_utterances_satisfies_only_one() -> None:
    utterances = {"a": [Utterance(1_000, 2_000), Utterance(2_400, 3_000)]}
    merged = result("a", 0, 850, 3_300)  # the VAD closed one segment over both

    matching = bench.match_streams(utterances, [merged])

    assert [(s, u) for s, u, _ in matching.pairs] == [("a", Utterance(1_000, 2_000))]
    assert matching.lost == [("a", Utterance(2_400, 3_000))]
    assert matching.unmatched == []


def test_the_assignment_matches_as_many_utterances_as_possible() -> None:
    # the first result overlaps the first utterance a little and the second one a lot; only the
    # second result overlaps the second utterance: both utterances are matched, each once
    utterances = [Utterance(0, 1_000), Utterance(1_100, 2_000)]
    results = [result("a", 0, 900, 1_900), result("a", 1, 1_950, 2_300)]

    assert bench.match_one_to_one(utterances, results) == [(0, 0), (1, 1)]


def test_among_equal_counts_the_assignment_takes_the_most_overlap() -> None:
    utterances = [Utterance(1_000, 2_000)]
    results = [result("a", 0, 0, 1_100), result("a", 1, 1_050, 2_200)]

    assert bench.match_one_to_one(utterances, results) == [(0, 1)]


def test_results_that_only_touch_an_utterance_do_not_match_it() -> None:
    assert bench.match_one_to_one([Utterance(1_000, 2_000)], [result("a", 0, 2_000, 2_500)]) == []


def test_a_repeated_notice_is_a_duplicate_and_its_first_arrival_counts() -> None:
    first = result("a", 0, 900, 2_300, received_at_ms=10_500)
    repeat = result("a", 0, 900, 2_300, received_at_ms=12_000)
    other_stream = result("b", 0, 900, 2_300, received_at_ms=11_000)

    distinct, duplicates = bench.first_arrivals([repeat, first, other_stream])

    assert duplicates == 1
    assert sorted((r.key, r.received_at_ms) for r in distinct) == [
        (("a", 0), 10_500),
        (("b", 0), 11_000),
    ]


def test_unmatched_and_missing_results_are_counted() -> None:
    utterances = {
        "a": [Utterance(1_000, 2_000), Utterance(6_000, 7_000)],
        "b": [Utterance(500, 1_500)],
    }
    results = [
        result("a", 0, 850, 2_300),
        result("a", 1, 4_000, 4_400),  # in the pause: matches nothing
        # a's second utterance has no result: lost
        result("b", 0, 400, 1_800),
        result("c", 0, 100, 900),  # a stream that was never planned
    ]

    matching = bench.match_streams(utterances, results)

    assert len(matching.pairs) == 2
    assert matching.lost == [("a", Utterance(6_000, 7_000))]
    assert sorted(r.key for r in matching.unmatched) == [("a", 1), ("c", 0)]


def test_cross_check_names_results_missing_from_redis_the_topic_or_the_notices() -> None:
    check = bench.cross_check(
        notified={("a", 0), ("a", 1), ("b", 0)},
        in_redis={("a", 0), ("b", 0), ("b", 1)},
        on_topic={("a", 0), ("a", 1), ("b", 0), ("b", 1)},
    )

    assert (check.notified, check.in_redis, check.on_topic) == (3, 3, 4)
    assert check.missing_from_redis == [("a", 1)]
    assert check.missing_from_topic == []
    assert check.not_notified == [("b", 1)]


def test_latency_parts_sum_to_the_latency_beyond_the_hangover() -> None:
    utterance_end_at_ms = 1_000_000.0  # wall clock of the utterance's last audio sample
    hangover_ms = 300.0
    event = EmotionEvent(
        stream_id="a:customer",
        segment_index=0,
        start_ms=850,
        end_ms=2_300,
        label="neutral",
        scores={"neutral": 1.0},
        model_name="m",
        model_version="1",
        latency=LatencyBreakdown(vad_ms=2.0, queue_ms=30.0, inference_ms=8.0, total_ms=45.0),
        # the VAD received the closing chunk 60 ms after the hangover ended
        created_at_ms=int(utterance_end_at_ms + hangover_ms + 60 + 45),
    )
    received_at_ms = event.created_at_ms + 12.0
    seen = bench.result_from_event(event, received_at_ms=received_at_ms)

    parts = bench.latency_parts_ms(
        seen, utterance_end_at_ms=utterance_end_at_ms, hangover_ms=hangover_ms
    )
    latency = bench.latency_ms(seen, utterance_end_at_ms=utterance_end_at_ms)

    assert list(parts) == [name for name in bench.LATENCY_PARTS if name not in SPLIT_PARTS]
    assert parts == pytest.approx(
        {
            "audio_to_vad": 60.0,
            "vad": 2.0,
            "queue": 30.0,
            "inference": 8.0,
            "other": 5.0,
            "publish": 12.0,
        }
    )
    assert latency == pytest.approx(sum(parts.values()) + hangover_ms)
    assert seen.stage_ms["total"] == 45.0  # the worker's own total, kept beside the parts


def test_a_known_closing_chunk_splits_audio_to_vad_in_three() -> None:
    seen = SegmentResult("a", 0, 850, 2_300, received_at_ms=2_000.0, speech_end_at_ms=1_500.0,
                         made_at_ms=1_990.0)
    # utterance end 1,000 + hangover 300; the closing chunk was due at 1,400 and sent at 1,450
    parts = bench.latency_parts_ms(seen, utterance_end_at_ms=1_000.0, hangover_ms=300.0,
                                   closing_chunk_at_ms=(1_400.0, 1_450.0))
    assert parts == pytest.approx({"endpoint": 100.0, "send_late": 50.0, "to_vad": 50.0, "publish": 10.0})
    without = bench.latency_parts_ms(seen, utterance_end_at_ms=1_000.0, hangover_ms=300.0)
    assert without["audio_to_vad"] == pytest.approx(sum(parts[name] for name in SPLIT_PARTS))


@pytest.mark.parametrize(("rate_hz", "encoding"), [(16_000, "s16le"), (8_000, "mulaw")])
def test_the_replayed_end_pointer_closes_each_utterance_after_its_hangover(rate_hz: int, encoding: str) -> None:
    (plan,) = bench.plan_streams(1, 30.0, pause_s=(2.0, 3.0), seed=3, sample_rate_hz=rate_hz)
    assert plan.sample_rate_hz == rate_hz
    params = bench.StreamParams()
    chunk_ms, chunks = 100, 300
    closing = bench.closing_chunks(plan, chunk_ms=chunk_ms, chunks=chunks, encoding=bench.AudioEncoding(encoding),
                                   params=params)
    assert len(closing) == len(plan.utterances)  # one segment per utterance of the fixture
    for index, utterance in enumerate(plan.utterances):
        closed_at_ms = (closing[index].seq + 1) * chunk_ms  # end of the closing chunk, stream time
        hangover_ms = params.endpointer.hangover_ms
        assert utterance.end_ms + hangover_ms <= closed_at_ms <= utterance.end_ms + hangover_ms + 400
        assert utterance.end_ms < closing[index].segment_end_ms
    # the result of that segment gets the closing chunk's due time and its send time
    sent_at_s = [10.0 + 0.1 * (seq + 1) + 0.02 for seq in range(chunks + 1)]  # each chunk sent 20 ms late
    seen = SegmentResult(plan.stream_id, 0, plan.utterances[0].start_ms, closing[0].segment_end_ms)
    due_at_ms, sent_at_ms = bench.closing_chunk_at_ms(seen, closing, origin_s=10.0, chunk_ms=chunk_ms,
                                                      sent_at_s=sent_at_s)
    assert due_at_ms == pytest.approx(10_000.0 + (closing[0].seq + 1) * chunk_ms)
    assert sent_at_ms - due_at_ms == pytest.approx(20.0)
    other_end = SegmentResult(plan.stream_id, 0, 0.0, closing[0].segment_end_ms + 50)  # not the replay's segment
    assert bench.closing_chunk_at_ms(other_end, closing, origin_s=10.0, chunk_ms=chunk_ms, sent_at_s=sent_at_s) is None
    assert bench.replay_disagreement(other_end, closing, len(sent_at_s)) == (
        f"segment 0 ends at {other_end.end_ms:.0f} ms in the worker, {closing[0].segment_end_ms:.0f} ms in the replay")
    unsent = bench.replay_disagreement(seen, closing, closing[0].seq)  # the closing chunk was never sent
    assert unsent == f"segment 0 was closed by chunk {closing[0].seq}, which was not sent"
    beyond = SegmentResult(plan.stream_id, len(closing), 0.0, 1.0)
    assert bench.replay_disagreement(beyond, closing, len(sent_at_s)) == (
        f"the replay has no segment {len(closing)} (it cut {len(closing)})")


def test_the_pipeline_figure_takes_the_generator_lateness_out_of_the_latency() -> None:
    utterances = {"a": [Utterance(1_000, 2_000)]}
    seen = SegmentResult("a", 0, 850, 2_300, received_at_ms=1_000_000 + 2_000 + 900,
                         speech_end_at_ms=1_000_000 + 2_000 + 700.0, made_at_ms=1_000_000 + 2_000 + 890.0)
    pairs = bench.match_streams(utterances, [seen]).pairs
    # the closing chunk was due 400 ms after the utterance's end and sent 250 ms late
    closing = {("a", 0): (1_000_000 + 2_000 + 400.0, 1_000_000 + 2_000 + 650.0)}
    samples = bench.latency_samples(pairs, origins_s={"a": 1_000.0}, hangover_ms=300.0, closing_at_ms=closing)
    assert samples.latencies_ms == pytest.approx([900.0])
    assert samples.parts_ms["send_late"] == pytest.approx([250.0])
    assert samples.pipeline_beyond_ms == pytest.approx([900.0 - 300.0 - 250.0])
    assert bench.latency_samples(pairs, origins_s={"a": 1_000.0}, hangover_ms=300.0).pipeline_beyond_ms == []


def test_a_result_without_a_notice_has_no_latency() -> None:
    seen = result("a", 0, 850, 2_300, received_at_ms=None)
    assert bench.latency_ms(seen, utterance_end_at_ms=1_000.0) is None
    assert "publish" not in bench.latency_parts_ms(
        seen, utterance_end_at_ms=1_000.0, hangover_ms=300
    )


def test_plan_shape_gives_pauses_between_utterances_and_their_lengths() -> None:
    shape = bench.plan_shape(
        {
            "a": [Utterance(5_000, 6_000), Utterance(1_000, 3_000)],  # any order
            "b": [Utterance(2_000, 2_500)],
        }
    )

    assert shape.pauses_s == bench.Spread(1, 2.0, 2.0, 2.0)
    assert shape.utterances_s == bench.Spread(3, 0.5, 1.0, 2.0)
    assert bench.spread([]) == bench.Spread(0, None, None, None)


def test_planned_streams_are_reproducible_and_keep_their_pauses() -> None:
    plans = bench.plan_streams(3, 30.0, pause_s=(4.0, 6.0), seed=7)
    again = bench.plan_streams(3, 30.0, pause_s=(4.0, 6.0), seed=7)
    other = bench.plan_streams(3, 30.0, pause_s=(4.0, 6.0), seed=8)

    assert [p.utterances for p in plans] == [p.utterances for p in again]
    assert [p.utterances for p in plans] != [p.utterances for p in other]
    shape = bench.plan_shape({p.stream_id: p.utterances for p in plans})
    assert shape.pauses_s.count > 0
    assert (
        4.0 <= shape.pauses_s.min
        and shape.pauses_s.max <= 6.0 + 2 * bench.UTTERANCE_MARGIN_MS / 1000
    )
    assert all(u.end_ms <= 30_000 - 1_000 for p in plans for u in p.utterances)


def test_seed_spread_over_runs_of_one_stream_count() -> None:
    def report(p50: float | None, p95: float | None, lost: int) -> dict:
        return {
            "beyond_hangover_ms": {50: p50, 95: p95},
            "beyond_hangover_less_sender_late_ms": {50: p50, 95: None if p95 is None else p95 - 40},
            "lost": lost,
            "unmatched_results": 0,
            "duplicates": 1,
            "cpu_ms_per_stream_s": {"workers": 3.0},
        }

    figures = bench.seed_spread([report(200, 250, 0), report(210, 290, 2), report(None, None, 5)])

    assert figures["p95_beyond_hangover_ms"] == bench.Spread(2, 250.0, 270.0, 290.0)
    assert figures["p95_beyond_hangover_less_sender_late_ms"] == bench.Spread(2, 210.0, 230.0, 250.0)
    assert figures["lost"] == bench.Spread(3, 0.0, 2.0, 5.0)
    assert figures["duplicates"].max == 1.0


def test_png_is_written_with_a_run_that_has_no_latency(tmp_path: Path) -> None:
    reports = [
        {"streams": 4, "lost": 0, "beyond_hangover_ms": {50: 200.0, 95: 250.0}},
        {"streams": 8, "lost": 0, "beyond_hangover_ms": {50: 210.0, 95: 260.0}},
        {"streams": 8, "lost": 3, "beyond_hangover_ms": {50: None, 95: None}},
    ]
    path = tmp_path / "latency.png"

    bench.write_png(path, reports, target_p95_ms=300.0, title="test")

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def event(stream_id: str, index: int, start_ms: float, end_ms: float) -> EmotionEvent:
    return EmotionEvent(
        stream_id=stream_id,
        segment_index=index,
        start_ms=start_ms,
        end_ms=end_ms,
        label="neutral",
        scores={"neutral": 1.0},
        model_name="m",
        model_version="1",
    )


def test_a_run_is_counted_against_redis_and_the_topic_as_well_as_the_notices() -> None:
    utterances = {
        "a": [Utterance(1_000, 2_000), Utterance(6_000, 7_000)],
        "b": [Utterance(500, 1_500)],
    }
    origin_s = 1_000.0  # audio time 0 of every stream, wall clock
    notices = [
        result("a", 0, 850, 2_300, received_at_ms=1_000_000 + 2_000 + 450),
        result("a", 0, 850, 2_300, received_at_ms=1_000_000 + 2_000 + 900),  # repeated notice
        result("b", 0, 400, 1_800, received_at_ms=1_000_000 + 1_500 + 500),
    ]
    a0, a1, b0 = event("a", 0, 850, 2_300), event("a", 1, 5_850, 7_300), event("b", 0, 400, 1_800)
    stored = [a0, a1]  # b's result never reached Redis
    on_topic = [a0, a1, a1, b0]  # a's second result was sent twice (a replay); nobody notified it

    counted = bench.count_results(utterances, notices, stored=stored, on_topic=on_topic)
    samples = bench.latency_samples(
        counted.matching.pairs, origins_s={"a": origin_s, "b": origin_s}, hangover_ms=300.0
    )

    assert counted.matching.lost == [] and counted.matching.unmatched == []
    assert counted.duplicates == 1 and counted.topic_duplicates == 1
    assert counted.check is not None
    assert counted.check.missing_from_redis == [("b", 0)]
    assert counted.check.missing_from_topic == []
    assert counted.check.not_notified == [("a", 1)]
    # latency only where a notice came, from its first arrival
    assert sorted(samples.latencies_ms) == pytest.approx([450.0, 500.0])


def test_without_redis_and_topic_only_the_notices_count() -> None:
    utterances = {"a": [Utterance(1_000, 2_000)]}

    counted = bench.count_results(utterances, [], stored=None, on_topic=None)

    assert counted.check is None
    assert counted.matching.lost == [("a", Utterance(1_000, 2_000))]


def test_the_vad_workers_chunk_and_gap_counters_are_summed_from_their_metrics() -> None:
    first, second = WorkerMetrics("vad"), WorkerMetrics("vad")
    first.chunks.labels("processed").inc(400)
    first.gaps.labels("filled").inc(1)
    second.chunks.labels("processed").inc(398)
    second.chunks.labels("late").inc(2)
    texts = [generate_latest(metrics.registry).decode() for metrics in (first, second)]
    assert bench.vad_chunk_outcomes(texts) == {"processed": 798, "late": 2, "gaps_filled": 1}
