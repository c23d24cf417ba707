"""The scheduler without HTTP: seeded jobs batched equal alone, limits, cancellation, failures."""
import threading

import numpy as np
import pytest

from minillm.serve.scheduler import Job, QueueFull, Scheduler

from .helpers import tiny_checkpoint


class Collector:
    """A job's emit callback that records its text and signals the end."""

    def __init__(self):
        self.pieces, self.end, self.done = [], None, threading.Event()

    def __call__(self, kind, value):
        if kind == "text":
            self.pieces.append(value)
        else:
            self.end = (kind, value)
            self.done.set()

    @property
    def text(self):
        return "".join(self.pieces)


@pytest.fixture
def tiny(tmp_path):
    _, model, tok = tiny_checkpoint(tmp_path / "t.safetensors")
    return model, tok


def run_jobs(scheduler, specs):
    """Submit one Job per (prompt ids, max_tokens, sampling) together; wait; return the collectors."""
    collectors = [Collector() for _ in specs]
    jobs = [Job(prompt, max_tokens, c, **sampling) for (prompt, max_tokens, sampling), c in zip(specs, collectors)]
    scheduler.submit(jobs)
    for c in collectors:
        assert c.done.wait(60)
    return collectors, jobs


def test_a_seeded_job_gives_the_same_text_alone_and_in_a_batch(tiny):
    model, tok = tiny
    scheduler = Scheduler(model, tok, max_batch=4, max_queue=16).start()
    try:
        seeded = (tok.encode("hello"), 30, {"temperature": 1.0, "top_p": 0.9, "seed": 11})
        (alone,), _ = run_jobs(scheduler, [seeded])
        others = [(tok.encode(p), n, {"temperature": 1.0, "seed": s})
                  for p, n, s in (("abc", 5, 1), ("a longer prompt", 40, 2), ("xyz", 17, 3), ("q", 9, 4), ("k", 3, 5))]
        batched, _ = run_jobs(scheduler, others[:2] + [seeded] + others[2:])   # 6 jobs, 4 rows: some wait, rows reused
    finally:
        scheduler.close()
    assert alone.end == ("done", "length") and alone.text
    assert batched[2].text == alone.text and batched[2].end == alone.end
    # the same as the library's own sampling of that prompt with that seed
    ids = model.generate(tok.encode("hello"), 30, temperature=1.0, top_p=0.9, seed=11)
    assert alone.text == tok.decode(ids[5:])


def test_limits_stop_ids_and_stop_strings(tiny):
    model, tok = tiny
    scheduler = Scheduler(model, tok, max_batch=2, max_queue=1).start()
    try:
        (free,), (job,) = run_jobs(scheduler, [(tok.encode("ab"), 20, {"temperature": 0.0})])
        assert job.completion_tokens == 20 and free.end == ("done", "length")
        stop = free.text[3:5]
        (cut,), _ = run_jobs(scheduler, [(tok.encode("ab"), 20, {"temperature": 0.0, "stop_strings": [stop]})])
        assert cut.text == free.text[:free.text.find(stop)] and cut.end == ("done", "stop")
        ids = model.generate(tok.encode("ab"), 20, temperature=0.0)[2:]
        (by_id,), (job,) = run_jobs(scheduler, [(tok.encode("ab"), 20, {"temperature": 0.0, "stop_ids": [ids[4]]})])
        assert by_id.end == ("done", "stop") and job.completion_tokens == ids.index(ids[4]) + 1
        with pytest.raises(QueueFull):
            scheduler.submit([Job([1], 1, Collector()), Job([1], 1, Collector())])
    finally:
        scheduler.close()


def test_a_cancelled_job_leaves_the_batch(tiny):
    model, tok = tiny
    scheduler = Scheduler(model, tok, max_batch=2).start()
    try:
        box = {}

        def emit(kind, value):                                   # cancels itself after its third piece of text
            box.setdefault("pieces", []).append(kind)
            if len(box["pieces"]) == 3:
                box["job"].cancel()

        box["job"] = Job(tok.encode("ab"), 80, emit, temperature=0.0)
        scheduler.submit([box["job"]])
        (other,), _ = run_jobs(scheduler, [(tok.encode("c"), 5, {"temperature": 0.0})])
        assert other.end == ("done", "length")
        for _ in range(200):
            if scheduler.batch.rows == 0:
                break
            threading.Event().wait(0.01)
        assert scheduler.batch.rows == 0 and box["job"].completion_tokens < 10
    finally:
        scheduler.close()


def test_a_failing_step_ends_its_jobs_with_an_error_and_the_scheduler_goes_on(tiny):
    model, tok = tiny
    scheduler = Scheduler(model, tok, max_batch=2).start()
    weight = model.tok_emb.weight
    saved = weight.data.copy()
    try:
        weight.data[:] = np.nan                                  # broken weights: NaN logits
        (broken,), _ = run_jobs(scheduler, [(tok.encode("ab"), 5, {"temperature": 1.0})])
        assert broken.end[0] == "error" and "NaN" in broken.end[1]
        weight.data[:] = saved
        (fine,), _ = run_jobs(scheduler, [(tok.encode("ab"), 5, {"temperature": 0.0})])
        assert fine.end == ("done", "length")
        assert scheduler.stats()["failures"] == 1
    finally:
        weight.data[:] = saved
        scheduler.close()


def test_a_token_its_tokenizer_cannot_decode_ends_that_job_only(tiny):
    model, tok = tiny

    class Picky:
        """The tokenizer, except that it cannot decode the id 'z' has."""
        special_tokens = tok.special_tokens

        def decode_bytes(self, ids):
            if tok.encode("z")[0] in ids:
                raise KeyError("no bytes for this id")
            return tok.decode_bytes(ids)

    scheduler = Scheduler(model, Picky(), max_batch=4).start()
    try:
        greedy = model.generate(tok.encode("ab"), 40, temperature=0.0)[2:]
        assert tok.encode("z")[0] in greedy, "premise: the greedy continuation of 'ab' holds a 'z'"
        z = tok.encode("z")[0]
        fine = [p for p in ("q", "k", "m", "b", "c", "e") if z not in model.generate(tok.encode(p), 3, temperature=0.0)[1:]][:2]
        assert len(fine) == 2, "premise: two one-letter prompts whose 3 greedy tokens hold no 'z'"
        specs = [(tok.encode("ab"), 40, {"temperature": 0.0})] + [(tok.encode(p), 3, {"temperature": 0.0}) for p in fine]
        results, _ = run_jobs(scheduler, specs)
    finally:
        scheduler.close()
    assert results[0].end[0] == "error" and "KeyError" in results[0].end[1]
    assert [r.end for r in results[1:]] == [("done", "length")] * 2      # the batch went on without it


def test_bad_sampling_settings_are_refused_at_submit_not_in_the_batch(tiny):
    model, tok = tiny
    scheduler = Scheduler(model, tok, max_batch=2).start()
    try:
        with pytest.raises(ValueError, match="top_k"):
            scheduler.submit([Job([1], 3, Collector(), top_k=0)])
        assert not scheduler.waiting
        (fine,), _ = run_jobs(scheduler, [(tok.encode("ab"), 3, {"temperature": 0.0})])
        assert fine.end == ("done", "length")
    finally:
        scheduler.close()
