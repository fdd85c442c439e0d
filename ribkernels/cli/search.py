"""Rank the gallery for each query image and draw the rank lists.

    python -m ribkernels search runs/<run>/final.pth --query q/ --gallery g/ --top-k 10 --out results/
    python -m ribkernels search runs/<run>/final.pth --query q/ --gallery gallery.npz --out results/

``--gallery`` is a folder of images or the .npz of ``extract`` (its features are used as they are;
the images at its paths are only read for the pictures). Written under ``--out`` only:
``results.csv`` and ``results.json`` (top-k of every query: gallery path, distance, match),
``ranklists/*.png`` (the query, then its top-k, with a green border for the same person and red
for another when the ids are known from Market-style names ``<pid>_c<camera>...``, gray otherwise
and for Market junk images, id -1)
and ``index.html`` showing them. A path in ``results.csv`` that starts with ``= + - @``, a tab or a
carriage return gets a leading ``'`` so that a spreadsheet shows it as text instead of running it as a
formula (``results.json`` keeps the exact paths). Distances are those of the checkpoint's evaluation config
(Euclidean on L2-normalised features, or cosine). When query and gallery ids are known, gallery
images of the query's person from the query's camera are skipped (the Market-1501 protocol;
``--keep-same-camera`` keeps them) and the query image itself is never listed.
"""
import csv
import html
import json
import os
import re
import unicodedata
import urllib.parse

from . import CommandError
from ._common import (add_camera_argument, add_checkpoint_argument, add_runtime_arguments, camera_ids_from_names,
                      check_checkpoint, check_device, check_writable_folder, positive_int)

NAME = "search"
HELP = "top-k gallery matches per query as CSV/JSON, rank-list PNGs and an HTML page"

OUTPUT_FILES = ("results.csv", "results.json", "index.html", "ranklists")
CELL_W, CELL_H, BORDER, GAP, LABEL_H = 64, 128, 4, 6, 16
COLORS = {True: (30, 170, 60), False: (220, 40, 40), None: (150, 150, 150), "query": (40, 80, 220)}


def add_arguments(parser) -> None:
    add_checkpoint_argument(parser)
    parser.add_argument("--query", required=True, nargs="+", metavar="IMAGE_OR_DIR", help="query images or folders")
    parser.add_argument("--gallery", required=True, nargs="+", metavar="DIR_OR_NPZ",
                        help="gallery images/folders, or one .npz written by 'extract'")
    parser.add_argument("--top-k", type=positive_int, default=10, help="matches kept per query")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created; must be empty "
                                                                    "unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out (replaces this command's own files there)")
    parser.add_argument("--max-ranklists", type=positive_int, default=200,
                        help="draw the rank lists of the first this many queries (CSV/JSON cover all)")
    parser.add_argument("--keep-same-camera", action="store_true",
                        help="keep gallery images of the query's person from the query's camera")
    add_camera_argument(parser)
    add_runtime_arguments(parser)


# ------------------------------------------------------------------------------------------ paths
def safe_name(text: str, limit: int = 60) -> str:
    """A file-name part made of [A-Za-z0-9._-] only, never empty, never starting with a dot."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:limit].lstrip(".")
    return out or "image"


class OutputFolder:
    """Every file this command writes goes through :meth:`path`, which refuses anything that does not
    resolve inside the folder (``..``, absolute parts, symbolic links pointing out)."""

    def __init__(self, root: str, overwrite: bool):
        if os.path.exists(root) and not os.path.isdir(root):
            raise CommandError(f"--out {root}: exists and is not a folder")
        if os.path.isdir(root) and os.listdir(root) and not overwrite:
            raise CommandError(f"--out {root}: folder is not empty (use --overwrite to write into it, or "
                               "choose a new folder)")
        self.root = os.path.realpath(root)  # made on the first write: a refused start leaves nothing
        existing = self.root
        while not os.path.isdir(existing):  # the nearest folder that exists must take the new one
            parent = os.path.dirname(existing)
            if parent == existing or (os.path.exists(existing) and not os.path.isdir(existing)):
                raise CommandError(f"--out {root}: {existing} is not a folder")
            existing = parent
        check_writable_folder(existing, "--out", root)


    def path(self, *parts: str) -> str:
        for part in parts:
            if os.path.isabs(part) or part in ("", ".", "..") or "/" in part or "\\" in part:
                raise CommandError(f"refusing to write {part!r}: not a plain file name")
        os.makedirs(self.root, exist_ok=True)
        p = os.path.realpath(os.path.join(self.root, *parts))
        if os.path.commonpath([p, self.root]) != self.root:
            raise CommandError(f"refusing to write {os.path.join(*parts)!r}: it resolves to {p}, outside --out "
                               f"{self.root}")
        return p


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(cell: str) -> str:
    """``cell`` for a CSV that spreadsheets open: a leading ``'`` when it would start a formula."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


# ------------------------------------------------------------------------------------------ inputs
def _load_gallery_npz(path: str, feat_dim: int):
    import numpy as np

    from ..inference import check_finite_features

    pickled = (f"--gallery {path}: holds pickled (object) arrays, which are never loaded (unpickling can run "
               "code); expected the .npz of 'ribkernels extract' (plain float and str arrays)")
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):
            raise CommandError(pickled) from None
        raise CommandError(f"--gallery {path}: cannot read it as an .npz of 'ribkernels extract' "
                           f"({type(exc).__name__})") from None
    except OSError as exc:
        raise CommandError(f"--gallery {path}: cannot read it as an .npz of 'ribkernels extract' "
                           f"({exc.strerror or type(exc).__name__})") from None
    if not hasattr(data, "files"):  # a bare .npy array
        raise CommandError(f"--gallery {path}: a single .npy array, expected the .npz of 'ribkernels extract'")
    with data:
        missing = [k for k in ("features", "paths") if k not in data.files]
        if missing:
            raise CommandError(f"--gallery {path}: arrays {missing} missing (has {data.files}); expected the "
                               "output of 'ribkernels extract'")
        try:
            feats, paths = data["features"], data["paths"]
            camids = data["camids"] if "camids" in data.files else None
        except ValueError as exc:
            if "pickle" in str(exc):
                raise CommandError(pickled) from None
            raise CommandError(f"--gallery {path}: an array cannot be read ({type(exc).__name__})") from None
    if feats.ndim != 2 or feats.shape[0] != len(paths) or paths.dtype.kind != "U" or feats.dtype.kind != "f":
        raise CommandError(f"--gallery {path}: expected float features [N, D] and N paths (str), got "
                           f"{feats.shape} {feats.dtype} and {paths.shape} {paths.dtype}")
    if feats.shape[1] != feat_dim:
        raise CommandError(f"--gallery {path}: {feats.shape[1]}-d features, but this checkpoint gives {feat_dim}-d "
                           "ones (extracted with another model?)")
    try:
        check_finite_features(feats, paths.tolist(), f"--gallery {path}")
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    base = os.path.dirname(os.path.abspath(path))
    resolved = [p if os.path.isabs(p) or os.path.exists(p) else os.path.join(base, p) for p in paths.tolist()]
    return feats.astype("float32", copy=False), resolved, camids


# ------------------------------------------------------------------------------------------ ranking
def rank(qf, gf, q_paths, g_paths, q_ids, g_ids, top_k: int, metric: str, keep_same_camera: bool):
    """Per query: a list of (gallery index, distance) of its top-k, closest first (stable ties)."""
    import numpy as np

    from ..reid.evaluation import compute_distance_matrix

    dist = compute_distance_matrix(qf, gf, metric=metric, normalize=True)
    same_file: dict = {}
    for j, p in enumerate(g_paths):
        same_file.setdefault(os.path.realpath(p), []).append(j)
    out = []
    for i in range(len(q_paths)):
        d = dist[i].astype(np.float64)
        skip = np.zeros(len(g_paths), dtype=bool)
        skip[same_file.get(os.path.realpath(q_paths[i]), [])] = True  # the query image itself
        if q_ids is not None and g_ids is not None and not keep_same_camera:
            (qp, qc), (gp, gc) = (q_ids[0][i], q_ids[1][i]), g_ids
            skip |= (gp == qp) & (gc == qc)
        d[skip] = np.inf
        order = np.argsort(d, kind="stable")
        out.append([(int(j), float(dist[i, j])) for j in order[:top_k] if np.isfinite(d[j])])
    return out


def same_person(q_ids, g_ids, i: int, j: int):
    """True/False when query ``i`` and gallery ``j`` have known ids; None (drawn gray) when ids are
    unknown or either is a Market junk image (id -1: neither this person nor another)."""
    if q_ids is None or g_ids is None:
        return None
    qp, gp = int(q_ids[0][i]), int(g_ids[0][j])
    if qp == -1 or gp == -1:
        return None
    return qp == gp


# ------------------------------------------------------------------------------------------ pictures
def _cell(path: str, color, label: str):
    from PIL import Image, ImageDraw

    from ..reid.image_dataset import read_image

    cell = Image.new("RGB", (CELL_W + 2 * BORDER, CELL_H + 2 * BORDER + LABEL_H), (255, 255, 255))
    ImageDraw.Draw(cell).rectangle([0, 0, CELL_W + 2 * BORDER - 1, CELL_H + 2 * BORDER - 1], fill=color)
    try:
        img = read_image(path).resize((CELL_W, CELL_H))
    except Exception:  # a gallery image of an .npz that moved: a placeholder, the lists stay complete
        img = Image.new("RGB", (CELL_W, CELL_H), (200, 200, 200))
        ImageDraw.Draw(img).text((4, CELL_H // 2 - 6), "missing", fill=(0, 0, 0))
    cell.paste(img, (BORDER, BORDER))
    ImageDraw.Draw(cell).text((2, CELL_H + 2 * BORDER + 2), label, fill=(0, 0, 0))
    return cell


def draw_ranklist(query_path: str, matches, out_path: str) -> None:
    """``matches``: [(gallery path, distance, match True/False/None)]; a PNG of the query then them."""
    from PIL import Image

    cells = [_cell(query_path, COLORS["query"], "query")]
    cells += [_cell(p, COLORS[m], f"{r}: {d:.3f}") for r, (p, d, m) in enumerate(matches, start=1)]
    w = sum(c.width for c in cells) + GAP * (len(cells) - 1) + 2 * GAP
    canvas = Image.new("RGB", (w + GAP, cells[0].height + 2 * GAP), (255, 255, 255))
    x = GAP
    for k, c in enumerate(cells):
        canvas.paste(c, (x, GAP))
        x += c.width + GAP + (GAP if k == 0 else 0)  # a wider gap after the query
    canvas.save(out_path)


def visible(text: str) -> str:
    """``text`` with control and format characters (Unicode Cc/Cf: the right-to-left override U+202E
    that shows "<U+202E>gnp.jpg" as "gpj.png", zero-width and other bidi marks) written as backslash-u
    and four hex digits."""
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) in ("Cc", "Cf") else c for c in text)


def write_html(path: str, rows, pictures) -> None:
    """One page: per query its name, its rank-list picture and the top-k names and distances; every
    name is HTML-escaped, every picture link percent-encoded."""
    esc = lambda s: html.escape(visible(str(s)), quote=True)
    parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8"><title>ribkernels search</title>',
             "<style>body{font-family:sans-serif} td{padding:2px 8px} .m1{color:#1a2} .m0{color:#d22}</style>",
             "</head><body>", "<h1>Rank lists</h1>",
             f"<p>{len(rows)} queries; green: same person, red: another person, gray: unknown or a junk image "
             "(id -1).</p>"]
    for row in rows:
        parts.append(f"<h2>{esc(row['query'])}</h2>")
        pic = pictures.get(row["query_index"])
        if pic:
            parts.append(f'<img src="{esc(urllib.parse.quote(pic))}" alt="{esc(row["query"])}">')
        parts.append("<table><tr><th>rank</th><th>gallery</th><th>distance</th><th>match</th></tr>")
        for m in row["matches"]:
            cls = {True: "m1", False: "m0"}.get(m["match"], "")
            parts.append(f'<tr class="{cls}"><td>{m["rank"]}</td><td>{esc(m["gallery"])}</td>'
                         f'<td>{m["distance"]:.4f}</td><td>{esc(m["match"])}</td></tr>')
        parts.append("</table>")
    parts.append("</body></html>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts) + "\n")


# ------------------------------------------------------------------------------------------ command
def run(args) -> int:
    import numpy as np

    from ..inference import extract_features, ids_from_names, list_images, load_model

    check_checkpoint(args.checkpoint)
    check_device(args.device)
    try:
        q_paths = list_images(args.query, "--query")
        npz = len(args.gallery) == 1 and args.gallery[0].lower().endswith(".npz")
        if npz and not os.path.isfile(args.gallery[0]):
            raise FileNotFoundError(f"--gallery {args.gallery[0]}: no such file")
        g_paths = None if npz else list_images(args.gallery, "--gallery")
    except (FileNotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    names = args.camera_ids == "names"
    q_cams = camera_ids_from_names(q_paths, "query") if names else None
    g_cams = camera_ids_from_names(g_paths, "gallery") if names and not npz else None
    out = OutputFolder(args.out, args.overwrite)

    loaded = load_model(args.checkpoint, args.device)
    feat_dim = int(getattr(loaded.model, "eval_feat_dim", 0) or 0)
    if npz:
        gf, g_paths, npz_cams = _load_gallery_npz(args.gallery[0], feat_dim)
        if names:
            g_cams = npz_cams
    else:
        gf = extract_features(loaded, g_paths, g_cams, batch_size=args.batch_size, num_workers=args.num_workers,
                              progress=args.progress, desc="gallery")
    qf = extract_features(loaded, q_paths, q_cams, batch_size=args.batch_size, num_workers=args.num_workers,
                          progress=args.progress, desc="query")
    q_ids, g_ids = ids_from_names(q_paths), ids_from_names(g_paths)
    q_ids = None if q_ids[0] is None else q_ids
    g_ids = None if g_ids[0] is None else g_ids
    ranked = rank(qf, gf, q_paths, g_paths, q_ids, g_ids, args.top_k, loaded.config["eval"]["distance"],
                  args.keep_same_camera)

    rows = []
    for i, matches in enumerate(ranked):
        rows.append({"query_index": i, "query": q_paths[i], "matches": [
            {"rank": r, "gallery": g_paths[j], "distance": d, "match": same_person(q_ids, g_ids, i, j)}
            for r, (j, d) in enumerate(matches, start=1)]})

    with open(out.path("results.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["query", "rank", "gallery", "distance", "match"])
        for row in rows:
            for m in row["matches"]:
                w.writerow([spreadsheet_text(row["query"]), m["rank"], spreadsheet_text(m["gallery"]),
                            f"{m['distance']:.6f}",
                            "" if m["match"] is None else int(m["match"])])
    with open(out.path("results.json"), "w", encoding="utf-8") as f:
        json.dump({"checkpoint": args.checkpoint, "metric": loaded.config["eval"]["distance"],
                   "top_k": args.top_k, "queries": rows}, f, indent=1)

    os.makedirs(out.path("ranklists"), exist_ok=True)
    pictures = {}
    for row in rows[: args.max_ranklists]:
        i = row["query_index"]
        stem = os.path.splitext(os.path.basename(row["query"]))[0]
        name = f"q{i:05d}_{safe_name(stem)}.png"
        draw_ranklist(row["query"], [(m["gallery"], m["distance"], m["match"]) for m in row["matches"]],
                      out.path("ranklists", name))
        pictures[i] = f"ranklists/{name}"
    write_html(out.path("index.html"), rows, pictures)
    known = "ids from file names" if q_ids is not None and g_ids is not None else "ids unknown"
    print(f"{args.out}: top-{args.top_k} of {len(rows)} queries against {len(g_paths)} gallery images ({known}); "
          f"{len(pictures)} rank lists, index.html")
    return 0
