import pytest
import torch

from ssmkit.inference import generate
from ssmkit.profile import Profiler, recorder
from ssmkit.profile.clocks import CudaClock
from ssmkit.profile.resolve import tensor_lists

from .models import UNITS, prompt, tiny_hybrid

TICK_NS = 1000  # one fake GPU tick is one microsecond


class FakeGpu:
    """A stream that gives each recorded event the next tick and finishes work `lag` ticks behind the host."""

    def __init__(self, lag: int):
        self.tick, self.done, self.lag = 0, 0, lag

    def record(self) -> int:
        self.tick += 1
        self.done = max(self.done, self.tick - self.lag)
        return self.tick


class FakeEvent:
    def __init__(self, gpu: FakeGpu):
        self.gpu, self.tick = gpu, None

    def record(self, stream) -> None:
        self.tick = self.gpu.record()

    def query(self) -> bool:
        return self.tick <= self.gpu.done

    def elapsed_time(self, end: "FakeEvent") -> float:
        assert self.query() and end.query(), "an event's time was read before the GPU passed it"
        return (end.tick - self.tick) * TICK_NS / 1e6  # milliseconds, as torch.cuda.Event gives them


class FakeCudaClock(CudaClock):
    """CudaClock's pool and bookkeeping over FakeEvents, so the CUDA path of the Profiler runs on CPU."""

    def __init__(self, gpu: FakeGpu, pool: int):
        self.gpu = gpu
        super().__init__("cuda:0", pool)

    def _new_event(self):
        self.created += 1
        return FakeEvent(self.gpu)

    def _stream_key(self):
        return 0

    def _make_stream(self):
        return "stream 0"

    def synchronize(self) -> None:
        self.gpu.done = self.gpu.tick


@pytest.mark.parametrize("lag", [0, 37])  # 37: resolved batches end mid-model-call, calls wait for a later write
def test_pooled_cuda_events_time_every_call_as_an_independent_count_of_marks_and_are_reused(monkeypatch, lag):
    gpu = FakeGpu(lag)
    clocks = []

    def fake_clock(kind, device, pool):
        clocks.append(FakeCudaClock(gpu, pool))
        return clocks[-1]

    monkeypatch.setattr(recorder, "make_clock", fake_clock)
    model = tiny_hybrid()
    new_tokens, batch_size = 30, 16
    with Profiler(model, batch_size=batch_size) as prof:
        generate(model, prompt(batch=2, seqlen=5), max_new_tokens=new_tokens)
    clock = clocks[0]
    events = prof.store.query("SELECT layer_type, start_ns, duration_ns FROM events ORDER BY call_id")[1]
    assert len(events) == new_tokens * len(UNITS)
    # Marks in the order the host takes them: every call a start and an end, an MoE call two more around its
    # router. A call's start is one tick after every mark before it; an event given out again before its time
    # was read would carry a later tick.
    origin, taken = clock.origin.tick, 0
    for layer_type, start_ns, duration_ns in events:
        marks = 4 if layer_type == "moe" else 2
        assert (start_ns, duration_ns) == ((taken + 1) * TICK_NS, (marks - 1) * TICK_NS)
        taken += marks
    assert origin + taken + 1 == gpu.tick  # nothing else was recorded but the exit's mark
    moe = prof.store.query("SELECT router_ns, expert_ns FROM moe_routing")[1]
    assert len(moe) == 2 * new_tokens and set(moe) == {(TICK_NS, 2 * TICK_NS)}
    # Reuse: the run took many more marks than there are events. A GPU that keeps up never has more than a batch
    # of calls (16 calls, 40 marks here) out, so the pool made before the run (and the origin) is all there is.
    assert taken > 4 * clock.created
    if lag == 0:
        assert clock.created == 4 * batch_size  # the origin is one of them


def test_tensor_lists_equal_each_tensors_own_tolist_across_dtypes_and_sizes():
    tensors = [torch.tensor([3, 1, 4]), torch.tensor([], dtype=torch.int64), torch.tensor([[2, 7], [1, 8]]),
               torch.tensor([5], dtype=torch.int32), torch.tensor([0, 9], dtype=torch.uint8)]
    assert tensor_lists(tensors) == [t.reshape(-1).tolist() for t in tensors]
    assert tensor_lists([]) == []
