"""The one patch mechanism: records, idempotence, printing and undo; every lasting MMSA patch is in it."""
import threading
import types

import pytest

import mmin_plugin  # noqa: F401  (registration installs the patches)
from mmin_plugin.integration import patching


def _target():
    mod = types.ModuleType("fake_mmsa")
    mod.value = 1

    class Trainer:
        def fit(self):
            return "orig"

    mod.Trainer = Trainer
    return mod, Trainer


def test_patch_records_original_and_reason_and_undo_restores():
    mod, Trainer = _target()
    rec = patching.patch(mod, "value", 2, "because")
    assert mod.value == 2 and rec.original == 1 and rec.reason == "because"
    assert patching.is_patched(mod, "value") and rec in patching.patches()
    assert patching.patch(mod, "value", 3, "again") is rec and mod.value == 2  # idempotent
    assert patching.undo(mod) == 1
    assert mod.value == 1 and not patching.is_patched(mod, "value") and rec not in patching.patches()


def test_wrap_keeps_the_original_reachable_and_the_method_bound():
    mod, Trainer = _target()
    original = Trainer.__dict__["fit"]
    patching.wrap(Trainer, "fit", lambda orig: lambda self: "wrapped " + orig(self), "test")
    try:
        assert Trainer().fit() == "wrapped orig"
        assert Trainer.fit.__wrapped__ is original and Trainer.fit.__name__ == "fit"
        patching.wrap(Trainer, "fit", lambda orig: lambda self: "twice", "again")  # no second layer
        assert Trainer().fit() == "wrapped orig"
    finally:
        patching.undo(Trainer, "fit")
    assert Trainer.__dict__["fit"] is original and Trainer().fit() == "orig"


def test_is_patched_sees_a_replacement_by_someone_else():
    mod, _ = _target()
    patching.patch(mod, "value", 2, "test")
    mod.value = 5  # another library replaced it after us
    try:
        assert not patching.is_patched(mod, "value")
    finally:
        patching.undo(mod)


def test_temporarily_restores_on_exit_and_on_error():
    mod, _ = _target()
    with patching.temporarily(mod, "value", 7):
        assert mod.value == 7
    assert mod.value == 1
    with pytest.raises(RuntimeError), patching.temporarily(mod, "value", 8):
        raise RuntimeError
    assert mod.value == 1 and not patching.is_patched(mod, "value")


def _tagging(tag, log):
    def wrap(inner):
        def fit(self):
            log.append(tag)
            return f"{tag}({inner(self)})"
        return fit
    return wrap


def test_per_thread_blocks_of_threads_closing_out_of_order_leave_nothing_behind():
    """Two threads open blocks on the same method and close them in the order they were opened (not
    nested): each thread's calls see its own wrapper only, a third thread sees the original, and the
    original is back at the end (nested mock.patch.object blocks left the first thread's wrapper)."""
    mod, Trainer = _target()
    original = Trainer.fit
    opened, first_closed, seen, log = threading.Barrier(2), threading.Event(), {}, []

    def trial(tag, close_first):
        with patching.per_thread(Trainer, "fit", _tagging(tag, log)):
            opened.wait()
            if not close_first:
                first_closed.wait()
            seen[tag] = Trainer().fit()
        if close_first:
            first_closed.set()

    threads = [threading.Thread(target=trial, args=("a", True)), threading.Thread(target=trial, args=("b", False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": "a(orig)", "b": "b(orig)"} and sorted(log) == ["a", "b"]
    assert Trainer.fit is original and Trainer().fit() == "orig"


def test_per_thread_blocks_nest_and_other_threads_are_unaffected():
    mod, Trainer = _target()
    log, other = [], []
    with patching.per_thread(Trainer, "fit", _tagging("outer", log)):
        with patching.per_thread(Trainer, "fit", _tagging("inner", log)):
            assert Trainer().fit() == "inner(outer(orig))"
            t = threading.Thread(target=lambda: other.append(Trainer().fit()))
            t.start()
            t.join()
        assert Trainer().fit() == "outer(orig)"
    assert other == ["orig"] and Trainer().fit() == "orig" and not patching.is_patched(Trainer, "fit")


def test_shared_replacement_stays_while_any_block_is_open():
    mod, _ = _target()
    first, second = patching.shared(mod, "value", 5), patching.shared(mod, "value", 6)
    first.__enter__()
    second.__enter__()
    assert mod.value == 5  # the first block's replacement
    first.__exit__(None, None, None)  # closed out of order
    assert mod.value == 5
    second.__exit__(None, None, None)
    assert mod.value == 1


def test_every_mmsa_patch_goes_through_the_helper_and_is_described():
    import MMSA
    import MMSA.config
    import MMSA.data_loader
    import MMSA.run
    from MMSA.models import AMIO
    from MMSA.trains import ATIO

    expected = [(MMSA.run, "torch"), (MMSA.run, "_run"), (AMIO, "__init__"), (ATIO, "getTrain"),
                (MMSA.config, "get_config_regression"), (MMSA.run, "get_config_regression"),
                (MMSA, "get_config_tune"), (MMSA.data_loader, "pickle"), (MMSA.run, "pickle"),
                (MMSA.run, "MMDataLoader"), (MMSA.data_loader.MMDataset, "__init__")]
    for owner, name in expected:
        assert patching.is_patched(owner, name), (owner, name)
    table = patching.describe()
    assert table.count("\n") == len(patching.patches()) + 1
    assert "`MMSA.models.AMIO.AMIO.__init__`" in table and "ReduceLROnPlateau" in table
    assert all(p.reason for p in patching.patches())
