"""The legends of ibb.png and rib.png sit outside the axes (under the x label), never over the data,
and keep every series (the right-axis ones included)."""
import pytest

from ribkernels.engine import reporting, rib_logging

EPOCHS = [{"epoch": e, "loss": 3.0 / e, "loss_id": 2.0, "loss_tri": 1.0, "ibb": 0.2 * e, "ibb_term1": -1.0,
           "ibb_term2": 1.2, "keep_fraction": 0.9, "ibb_refresh_beta": 1.5, "ibb_beta_train": 1.6,
           "ibb_refresh_input_beta": 3.0, "ibb_refresh_mean_max_phi": 0.5, "ibb_refresh_mean_phi_entropy": 1.0,
           "ibb_refresh_mean_q_entropy": 2.0, "ibb_refresh_label_term": 1.9, "ibb_refresh_log_num_classes": 2.1,
           "ibb_grad_ratio": 0.4, "keep_fraction_b0": 0.95, "eval_keep_fraction_b0": 1.0,
           "keep_fraction_b1": 0.9, "eval_keep_fraction_b1": 0.97} for e in (1, 2, 3)]


@pytest.fixture
def figures(monkeypatch, tmp_path):
    figs = {}

    def keep(fig, out_dir, name):
        fig.tight_layout()
        fig.canvas.draw()
        figs[name] = fig
        return name

    monkeypatch.setattr(reporting, "save_figure", keep)
    reporting.plot_curves({"epochs": EPOCHS}, str(tmp_path))
    rib_logging.plot_rib({"epochs": EPOCHS}, str(tmp_path))
    return figs


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_legends_of_ibb_and_rib_plots_are_off_the_data(figures):
    assert {"ibb.png", "rib.png"} <= set(figures)
    checked = 0
    for name in ("ibb.png", "rib.png"):
        fig = figures[name]
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            legend = ax.get_legend()
            if legend is None:
                continue
            box = legend.get_window_extent(renderer)
            for other in fig.axes:  # its own axes, the twin axes and the neighbouring panels
                assert not _overlaps(box, other.get_window_extent(renderer)), (name, ax.get_title())
            checked += 1
    assert checked == 5  # ibb.png's one, rib.png's four
    ibb = [t.get_text() for t in figures["ibb.png"].axes[0].get_legend().get_texts()]
    assert ibb == ["ibb", "ibb_term1", "ibb_term2", "keep fraction (right axis)"]
    terms = next(a for a in figures["rib.png"].axes if a.get_title() == "IBB terms (nats)")
    assert [t.get_text() for t in terms.get_legend().get_texts()][-1] == "|∇IBB| / |∇task| on F (right axis)"
