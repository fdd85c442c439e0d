"""What a training run reports over time (no training needed): the run clock's ETA over the whole run,
and the plots (complete legends, markers, integer epochs, a visible single point).
"""
import pytest


def test_run_clock_eta_covers_the_whole_run():
    from ribkernels.engine.reporting import RunClock, format_duration

    now = [100.0]
    clock = RunClock(total_iters=50, done_iters=10, clock=lambda: now[0])  # resumed at iteration 10
    assert clock.eta_s() is None
    for _ in range(8):
        now[0] += 0.5
        clock.tick()
    assert clock.eta_s() == pytest.approx(0.5 * (50 - 18))
    assert [format_duration(s) for s in (7, 125, 3725)] == ["7s", "2m05s", "1h02m"]


def test_plots_have_complete_legends_markers_and_integer_epochs(tmp_path, monkeypatch):
    from ribkernels.engine import reporting

    figs = {}

    def keep(fig, out_dir, name):
        fig.canvas.draw()
        figs[name] = fig
        return name

    monkeypatch.setattr(reporting, "save_figure", keep)
    metrics = {"epochs": [{"epoch": 1, "loss": 3.0, "loss_id": 2.0, "loss_tri": 1.0, "ibb": 0.2, "ibb_term1": -1.0,
                           "ibb_term2": 1.2, "keep_fraction": 0.9}],
               "evals": [{"epoch": 1, "mAP": 0.1, "rank1": 0.2, "mINP": 0.05}]}
    assert sorted(reporting.plot_curves(metrics, str(tmp_path))) == ["eval.png", "ibb.png", "losses.png"]
    legends = {n: [t.get_text() for t in f.axes[0].get_legend().get_texts()] for n, f in figs.items()}
    assert legends["ibb.png"] == ["ibb", "ibb_term1", "ibb_term2", "keep fraction (right axis)"]
    assert legends["eval.png"] == ["mAP", "Rank-1", "mINP"]
    assert legends["losses.png"] == ["loss", "loss_id", "loss_tri"]
    for fig in figs.values():
        for ax in fig.axes:
            assert all(line.get_marker() not in (None, "None", "") for line in ax.get_lines())
        lo, hi = fig.axes[0].get_xlim()
        assert lo < 1 < hi
        assert all(float(t).is_integer() for t in fig.axes[0].get_xticks())


def test_plot_axes_have_integer_epochs_and_a_visible_single_point(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ribkernels.engine.reporting import _epoch_axis

    fig, ax = plt.subplots()
    ax.plot([3], [0.5], marker="o")
    _epoch_axis(ax, [3])
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    assert lo < 3 < hi and hi - lo >= 2
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks and all(float(t).is_integer() for t in ticks)
    plt.close(fig)
