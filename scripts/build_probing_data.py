"""Build the two shipped probing datasets in bench/data/probing/ from PyPI packages, deterministically.

    python scripts/build_probing_data.py            # both files
    python scripts/build_probing_data.py --only sentiment --vader-sdist vaderSentiment-3.3.2.tar.gz

code_language.jsonl: one snippet per source file, five languages, from files every install of the
suite has: Python (the standard library, tests and site-packages left out), C (CPython's headers,
numpy's C API headers, libxml2 and libxslt headers shipped in lxml), C++ (PyTorch's c10 and
ATen/core headers), YAML and Markdown (lm-evaluation-harness task configs and READMEs). A snippet is about 400 characters taken from the
first line break after a third of the file, so licence headers are skipped.

sentiment.jsonl: movie-review sentences with human sentiment ratings (mean of about 20 raters on
-4..4) from the VADER paper's data, shipped in the vaderSentiment 3.3.2 source distribution on PyPI
(downloaded with pip unless --vader-sdist is given). "positive" is a mean rating >= 2, "negative"
<= -2; the middle band is left out, as the reference leaves out 2-4 star reviews.

Each class is capped at --per-class texts (default 300), sampled with a fixed seed; every row
records where its text came from. Licences: bench/data/probing/README.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent.parent / "bench" / "data" / "probing"
VADER_VERSION = "3.3.2"
VADER_MEMBER = "additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_MOVIES = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
SNIPPET_CHARS = 400
SEED = 0


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name} is not installed (pip install {name})")
    return Path(list(spec.submodule_search_locations)[0])


def code_sources() -> dict[str, list[tuple[Path, str]]]:
    """language -> (file, origin label) for every candidate file, in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    include = Path(sysconfig.get_paths()["include"])
    torch_include = package_dir("torch") / "include"
    lm_eval_tasks = package_dir("lm_eval") / "tasks"

    def files(root: Path, pattern: str, origin: str) -> list[tuple[Path, str]]:
        return [(p, f"{origin}/{p.relative_to(root)}") for p in sorted(root.glob(pattern)) if p.is_file()]

    return {
        "Python": [(p, o) for p, o in files(stdlib, "**/*.py", "cpython-stdlib")
                   if not {"site-packages", "test", "tests"} & set(p.relative_to(stdlib).parts)],
        "C": files(include, "**/*.h", "cpython-include") + files(package_dir("numpy") / "_core" / "include", "**/*.h", "numpy")
             + files(package_dir("lxml") / "includes", "lib*/*.h", "lxml"),
        "C++": files(torch_include / "c10", "**/*.h", "torch/c10")
               + files(torch_include / "ATen" / "core", "**/*.h", "torch/ATen/core"),
        "YAML": files(lm_eval_tasks, "**/*.yaml", "lm_eval/tasks"),
        "Markdown": files(lm_eval_tasks, "**/*.md", "lm_eval/tasks"),
    }


def snippet(text: str, chars: int = SNIPPET_CHARS) -> str | None:
    """About ``chars`` characters of whole lines starting a third of the way in; None if too little is left."""
    start = text.find("\n", max(150, len(text) // 3))
    if start < 0:
        return None
    piece = text[start + 1:start + 1 + chars]
    if len(piece) == chars and "\n" in piece:
        piece = piece[:piece.rfind("\n")]
    return piece if len(piece.strip()) >= chars // 2 else None


def build_code(per_class: int) -> list[dict]:
    rows = []
    for language, candidates in code_sources().items():
        rng = random.Random(f"{SEED}-{language}")
        order = list(candidates)
        rng.shuffle(order)
        taken = 0
        for path, origin in order:
            piece = snippet(path.read_text(encoding="utf-8", errors="replace"))
            if piece is None:
                continue
            rows.append({"text": piece, "label": language, "origin": origin})
            taken += 1
            if taken == per_class:
                break
        print(f"code-language {language}: {taken} snippets from {len(candidates)} files", file=sys.stderr)
    return rows


def vader_ratings(sdist: Path | None) -> list[tuple[float, str, str]]:
    """(mean rating, sentence, id) of the movie-review snippets in the vaderSentiment source archive."""
    with tempfile.TemporaryDirectory() as scratch:
        if sdist is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            f"vaderSentiment=={VADER_VERSION}", "-d", scratch], check=True)
            sdist = next(Path(scratch).glob("vaderSentiment-*.tar.gz"))
        with tarfile.open(sdist) as outer:
            member = next(m for m in outer.getmembers() if m.name.endswith(VADER_MEMBER))
            with tarfile.open(fileobj=outer.extractfile(member)) as inner:
                raw = inner.extractfile(VADER_MOVIES).read().decode("utf-8")
    rows = []
    for line in raw.splitlines():
        parts = line.strip().split("\t")
        if len(parts) == 3:
            rows.append((float(parts[1]), parts[2].strip(), parts[0]))
    return rows


def build_sentiment(per_class: int, sdist: Path | None) -> list[dict]:
    ratings = vader_ratings(sdist)
    rows = []
    for label, keep in (("negative", lambda r: r <= -2.0), ("positive", lambda r: r >= 2.0)):
        pool = [(rating, text, ident) for rating, text, ident in ratings if keep(rating)]
        chosen = sorted(random.Random(f"{SEED}-{label}").sample(pool, min(per_class, len(pool))), key=lambda r: int(r[2]))
        rows += [{"text": text, "label": label, "rating": rating, "origin": f"vader-movie-snippet/{ident}"}
                 for rating, text, ident in chosen]
        print(f"sentiment {label}: {len(chosen)} of {len(pool)} rated sentences", file=sys.stderr)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {path} ({len(rows)} rows, {path.stat().st_size / 1024:.0f} KiB)", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("code-language", "sentiment"), default=None)
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--vader-sdist", type=Path, default=None,
                        help=f"a local vaderSentiment-{VADER_VERSION}.tar.gz (default: pip download it)")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    if args.only in (None, "code-language"):
        write_jsonl(args.out / "code_language.jsonl", build_code(args.per_class))
    if args.only in (None, "sentiment"):
        write_jsonl(args.out / "sentiment.jsonl", build_sentiment(args.per_class, args.vader_sdist))
    return 0


if __name__ == "__main__":
    sys.exit(main())
