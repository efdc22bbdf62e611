"""Progress reporting and cancellation of the long operations (medkern._progress).

Every operation is run on a small input with ``progress=None`` (the reference) and with a
recording callable: the results must be bit-identical, the fractions non-decreasing in [0, 1]
and ending with exactly one 1.0. The throttle (``MIN_INTERVAL_S``) is set to 0 in these tests, so
the callable sees every check point and the call sequence is deterministic: a callable that
returns False once the fraction reaches 50 % must see exactly the full run's calls up to that
point and no more (the operation stopped at that check point).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage

import medkern as mk
import medkern._progress as progress_module
from medkern._progress import NO_PROGRESS, Progress


# ----------------------------------------------------------------------------- inputs
def _blob(shape, seed, spacing=(1.2, 1.0, 1.0)) -> mk.Image:
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.normal(size=shape), 2.5)
    return mk.Image(((a - a.min()) / np.ptp(a) * 1000).astype(np.float32), spacing=spacing)


def _rotated(img: mk.Image, angle: float, shift) -> mk.Image:
    m = np.eye(4)
    c, s = np.cos(angle), np.sin(angle)
    m[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    m[:3, 3] = shift
    return mk.warp(img, mk.Affine(m), reference=img)


def _arrays(result) -> list[np.ndarray]:
    """Every number an operation returned, as arrays, for bit-for-bit comparison."""
    if isinstance(result, mk.RegistrationResult):
        out = [result.matrix, np.array([result.metric]), np.array(result.iterations)]
        if result.field is not None:
            out += [result.field.field.array, result.inverse_field.field.array]
        return out
    if isinstance(result, mk.Image):
        return [np.asarray(result.array), result.affine]
    if isinstance(result, mk.Prediction):
        return [result.probabilities.array, result.labels.array]
    if isinstance(result, (list, tuple)):
        return [a for r in result for a in _arrays(r)]
    if isinstance(result, mk.DicomSeries):
        return [np.array(result.shape), np.array(result.spacing), result.origin, result.direction]
    if hasattr(result, "features"):  # RadiomicsResult
        return [np.array(list(result.keys())), np.array(list(result.values()))]
    return [np.asarray(result)]


@pytest.fixture(scope="module")
def operations(tmp_path_factory):
    """name -> (run(progress) -> result, stages every full run reports)."""
    fixed = _blob((28, 28, 28), 1)
    moving = _rotated(fixed, 0.06, (1.5, -1.0, 0.8))
    small_fixed = _blob((20, 20, 20), 2)
    small_moving = _rotated(small_fixed, 0.04, (1.0, 0.5, -0.5))
    k, j, i = np.indices((24, 24, 24), dtype=np.float32) / 24
    biased = _blob((24, 24, 24), 3)
    biased = biased.with_array((biased.array + 100) * np.exp(0.3 * k - 0.25 * i + 0.1 * j))
    patches = np.random.default_rng(4).normal(size=(1, 20, 22, 18)).astype(np.float32)
    model = mk.models.load("sarcoma-ct")
    ct = _blob((14, 40, 40), 5, spacing=(3.0, 2.4, 2.4))
    ct = ct.with_array(ct.array - 300)
    roi_img = _blob((16, 18, 18), 6, spacing=(2.0, 1.0, 1.0))
    kk, jj, ii = np.indices(roi_img.shape)
    roi_mask = ((kk - 8) / 6) ** 2 + ((jj - 9) / 7) ** 2 + ((ii - 9) / 6.5) ** 2 < 1
    folder = tmp_path_factory.mktemp("series")
    series = _blob((12, 16, 16), 7)
    mk.write_dicom_series(series.with_array(series.array.astype(np.int16)), folder / "a", modality="CT")
    mk.write_dicom_series(series.with_array(series.array * 0.37), folder / "b", series_number=2)
    uid = mk.list_dicom_series(folder / "b")[0].key

    def sliding(progress):
        return mk.sliding_window(patches, lambda b: np.concatenate([2 * b, np.sin(b)], axis=1), 8,
                                 overlap=0.5, batch_size=3, progress=progress)

    return {
        "register": (lambda p: mk.register(fixed, moving, levels=(2, 1), progress=p),
                     {"level 1/2", "level 2/2"}),
        "register_deformable": (
            lambda p: mk.register(small_fixed, small_moving, "deformable", levels=(2, 1),
                                  field_iterations=(4, 3), progress=p),
            {"level 1/2", "level 2/2", "field level 1/2", "field level 2/2", "field"}),
        "n4_bias_correction": (
            lambda p: mk.n4_bias_correction(biased, biased.array > 150, shrink_factor=2,
                                            return_bias_field=True, progress=p),
            {"shrink", "fit", "apply"}),
        "sliding_window": (sliding, {"patches"}),
        "predict": (lambda p: model.predict(ct, progress=p), {"preprocess", "patches", "postprocess"}),
        "predict_many": (lambda p: model.predict_many([ct, ct[2:]], progress=p),
                         {"preprocess", "patches", "postprocess"}),
        "radiomics": (lambda p: mk.radiomics(roi_img, roi_mask, ("shape", "firstorder", "glcm", "glszm"),
                                             bin_width=50, texture_dims=("2D", "3D"), progress=p),
                      {"prepare", "morphology", "statistics", "glcm", "glszm"}),
        "list_dicom_series": (lambda p: mk.list_dicom_series(folder, progress=p), {"scan"}),
        "read_dicom_series": (lambda p: mk.read_dicom_series(folder, uid, progress=p),
                              {"scan", "read", "values"}),
    }


NAMES = ["register", "register_deformable", "n4_bias_correction", "sliding_window", "predict",
         "predict_many", "radiomics", "list_dicom_series", "read_dicom_series"]


@pytest.fixture
def every_call(monkeypatch):
    """No throttling: the callable sees every check point."""
    monkeypatch.setattr(progress_module, "MIN_INTERVAL_S", 0.0)


class _Recorder:
    def __init__(self, stop_at: float | None = None, raise_at_call: int | None = None):
        self.calls: list[tuple[str, float]] = []
        self.stop_at, self.raise_at_call = stop_at, raise_at_call
        self.error = RuntimeError("raised by the progress callable")

    def __call__(self, stage, fraction):
        self.calls.append((stage, fraction))
        if self.raise_at_call is not None and len(self.calls) == self.raise_at_call:
            raise self.error
        if self.stop_at is not None and fraction >= self.stop_at:
            return False
        return None


@pytest.fixture(scope="module")
def full_runs(operations):
    """Reference result (progress=None) and the recorded calls of an unthrottled full run."""
    runs = {}
    saved = progress_module.MIN_INTERVAL_S
    progress_module.MIN_INTERVAL_S = 0.0
    try:
        for name in NAMES:
            run, _ = operations[name]
            reference = run(None)
            recorder = _Recorder()
            runs[name] = (reference, run(recorder), recorder.calls)
    finally:
        progress_module.MIN_INTERVAL_S = saved
    return runs


# ----------------------------------------------------------------------------- every operation
@pytest.mark.parametrize("name", NAMES)
def test_callable_sees_monotone_fractions_ending_at_one_and_results_unchanged(name, operations, full_runs):
    reference, with_progress, calls = full_runs[name]
    for a, b in zip(_arrays(reference), _arrays(with_progress), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)  # bit-identical (NaN features compare equal)
    fractions = [f for _, f in calls]
    assert len(calls) >= 3
    assert all(isinstance(f, float) and 0.0 <= f <= 1.0 for f in fractions)
    assert all(a <= b for a, b in zip(fractions, fractions[1:]))
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions.count(1.0) == 1
    assert {stage for stage, _ in calls} >= operations[name][1]
    assert any(0.0 < f < 1.0 for f in fractions)


@pytest.mark.parametrize("name", NAMES)
def test_false_at_first_call_cancels_before_any_work(name, operations, every_call):
    threads = mk.get_num_threads()
    recorder = _Recorder(stop_at=0.0)
    with pytest.raises(mk.Cancelled, match="cancelled") as info:
        operations[name][0](recorder)
    assert len(recorder.calls) == 1
    assert recorder.calls[0][0] in str(info.value)  # the stage it stopped in
    assert mk.get_num_threads() == threads


@pytest.mark.parametrize("name", NAMES)
def test_false_midway_stops_at_that_check_point(name, operations, full_runs, every_call):
    _, _, full = full_runs[name]
    first = next(n for n, (_, f) in enumerate(full) if f >= 0.5)
    recorder = _Recorder(stop_at=0.5)
    with pytest.raises(mk.Cancelled) as info:
        operations[name][0](recorder)
    # The same check points as the full run up to the first at >= 50 %, and not one more.
    assert recorder.calls == full[:first + 1]
    assert len(recorder.calls) < len(full)
    assert full[first][0] in str(info.value)


def test_cancelled_sliding_window_stops_calling_the_network(every_call):
    x = np.random.default_rng(0).normal(size=(1, 24, 24, 24)).astype(np.float32)
    batches = []

    def network(batch):
        batches.append(len(batch))
        return batch

    full = mk.sliding_window(x, network, 8, overlap=0.5, batch_size=5)
    n_full = len(batches)
    batches.clear()
    with pytest.raises(mk.Cancelled, match="sliding_window"):
        mk.sliding_window(x, network, 8, overlap=0.5, batch_size=5,
                          progress=lambda stage, f: f < 0.5)
    assert full.shape == (1, 24, 24, 24)
    assert 0 < len(batches) < n_full
    # progress(...) returned the batch share done before each batch: 0.5 of the batches ran.
    assert len(batches) == int(np.ceil(0.5 * n_full))


def test_cancelled_reads_write_nothing(operations, tmp_path, every_call):
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(mk.Cancelled):
        operations["read_dicom_series"][0](_Recorder(stop_at=0.5))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("name", NAMES)
def test_exception_in_callable_propagates_unchanged(name, operations, every_call):
    recorder = _Recorder(raise_at_call=2)
    with pytest.raises(RuntimeError) as info:
        operations[name][0](recorder)
    assert info.value is recorder.error


@pytest.mark.parametrize("name", NAMES)
def test_progress_true_draws_a_tqdm_bar_on_stderr(name, operations, full_runs, capsys):
    result = operations[name][0](True)
    for a, b in zip(_arrays(full_runs[name][0]), _arrays(result), strict=True):
        np.testing.assert_array_equal(a, b)
    err = capsys.readouterr().err
    assert "100%" in err and "|" in err


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", ["yes", 1, 0.5])
def test_invalid_progress_raises_type_error(name, bad, operations):
    with pytest.raises(TypeError, match="progress must be None, False, True or a callable"):
        operations[name][0](bad)


def test_progress_false_is_none(operations, full_runs):
    for a, b in zip(_arrays(full_runs["register"][0]), _arrays(operations["register"][0](False)),
                    strict=True):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- the helper
def test_spans_map_to_overall_fractions(every_call):
    recorder = _Recorder()
    with Progress(recorder, "op") as p:
        a, b = p.split([1.0, 3.0])
        a.update("a", 0.5)        # 0.5 of [0, 0.25]
        b.update("b", 0.5)        # 0.25 + 0.5 * 0.75
        inner = b.span(0.5, 1.0)  # [0.625, 1]
        inner.update("c", 0.5)
        inner.update("c", 0.1)    # earlier than reported: held at the last fraction
        b.update("b", 1.0)        # the end of the last span is the end of the operation
        b.update("b", 1.0)
    assert recorder.calls == [("a", 0.125), ("b", 0.625), ("c", 0.8125), ("c", 0.8125), ("b", 1.0)]
    assert [s._hi for s in Progress(recorder, "op").split([0, 0, 0])] == [1 / 3, 2 / 3, 1.0]


def test_only_exactly_false_cancels(every_call):
    for answer in (None, 0, "", True):
        with Progress(lambda stage, f, answer=answer: answer, "op") as p:
            p.update("x", 0.5)
    with pytest.raises(mk.Cancelled, match=r"^op cancelled .* stage 'x' \(50 % done\)"), \
            Progress(lambda stage, f: False, "op") as p:
        p.update("x", 0.5)


def test_calls_are_throttled_to_about_a_hundred_a_second():
    recorder = _Recorder()
    start = time.monotonic()
    with Progress(recorder, "op") as p:
        for n in range(200_000):
            p.update("loop", n / 200_000)
    elapsed = time.monotonic() - start
    assert len(recorder.calls) <= 2 + elapsed / progress_module.MIN_INTERVAL_S
    assert recorder.calls[-1] == ("loop", 1.0)


def test_inactive_progress_and_errors():
    assert not NO_PROGRESS.active and not Progress(None, "op").active and not Progress(False, "op").active
    NO_PROGRESS.update("x", 0.5)
    NO_PROGRESS.done()
    assert issubclass(mk.Cancelled, mk.MedkernError) and mk.Cancelled is mk.errors.Cancelled
    with pytest.raises(TypeError, match="op: progress must be"):
        Progress("yes", "op")


def test_bar_closed_when_the_operation_fails(capsys):
    with pytest.raises(ValueError, match="inside"), Progress(True, "failing op") as p:
        p.update("half", 0.5)
        raise ValueError("inside")
    assert p._sink.bar.disable  # tqdm.close() disables the bar
    assert "failing op" in capsys.readouterr().err
