"""Every real query of the store works with SQLite's variable limit at 999, on a store large enough that one
variable per pair (or two, as pairing once bound) passes it. Timings at a million rows: benchmarks/bench_store.py."""

from synthetic_store import RUN_ID, VARIABLE_LIMIT, fill, limited_store, queries


def test_every_query_works_under_a_999_variable_limit(tmp_path):
    tasks, personas, samples = 40, 30, 2  # 1,200 pairs: binding one variable per pair would pass 999
    store = limited_store(tmp_path)
    fill(store, tasks, personas, samples, eval_tasks=30, eval_personas=40, eval_conversations=2)  # pairing too
    assert tasks * personas > VARIABLE_LIMIT
    results = {name: call() for name, call in queries(store).items()}

    pairs = tasks * personas
    assert len(results["pairing: golds of the split's pairs"]) == pairs
    assert len(results["pairs of an iteration (joined)"]) == pairs
    assert len(results["simulate resume: conversation ids"]) == pairs * samples
    assert results["score resume: conversations to score"]
    assert all(c["scored"] for c in results["score resume: conversations to score"])
    assert len(results["turns of one 64-conversation chunk"]) == 64
    selections, responses = results["respond resume: selections, responses"]
    assert len(selections) == len(responses) == pairs
    assert len(results["train: selected conversations' turns"]) == pairs
    assert len(results["train: training examples (reads + assembly)"]) == pairs
    (status_run,) = results["status"]["runs"]
    (iteration,) = status_run["iterations"]
    assert (iteration["pairs"], iteration["conversations"], iteration["scored"], iteration["responses"]) == (
        pairs, pairs * samples, pairs * samples, pairs)
    assert iteration["stages_done"] == ["pairs", "simulate", "score", "select", "respond"]
    assert not iteration["complete"]
    summary = results["eval: summary (every eval read)"]
    assert [i["iteration"] for i in summary["iterations"]] == [0, 1]
    assert summary["iterations"][1]["logprob"]["random"]["n"] == 30 * 40 * 2
    assert summary["iterations"][1]["win_rate"]["valid"] == 30 * 40
    assert store.get_run(RUN_ID)
