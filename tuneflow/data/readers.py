"""Reading example files into frames, for every task type: IO only, no torch.

Every frame carries a ``_line`` column (the line number in its source file) so that a problem can be
reported as ``file:line``. This module imports only pandas, so that bad data is reported in a second or
two, before Prefect, torch or a tokenizer start (``tuneflow run``'s pre-flight check).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tuneflow.config import DataConfig, FileSpec

SPLITS = ("train", "validation", "test")
TEXT, LABEL, LINE = "text", "label", "_line"
TAGS = "tags"  # token_classification: the BIO tag list of a sentence
TOKENS = "tokens"  # token_classification: the word list of a sentence
MESSAGES = "messages"
ROLES = ("system", "user", "assistant")
TARGET, REFERENCES = "target", "references"


@dataclass(frozen=True)
class Problem:
    """One data problem, located as precisely as we can."""

    message: str
    file: str | None = None
    line: int | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = self.file or ""
        if self.line is not None:
            where += f":{self.line}"
        if self.column:
            where += f" [column '{self.column}']"
        return f"{where}: {self.message}" if where else self.message


@dataclass
class RawData:
    """Frames as read from their sources (``text``, ``label``, ``_line`` columns), before any split."""

    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def trained(self) -> pd.DataFrame:
        """What the model trains on before validation/test are carved out: train and every labelled round
        (their frames are named ``labelled:ROUND``)."""
        parts = [df for name, df in self.frames.items() if name == "train" or is_round(name)]
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]

    def train_source(self) -> str:
        """Where train's examples come from, for messages about all of them (counts, label sets)."""
        rounds = sum(is_round(name) for name in self.frames)
        return self.sources.get("train", "train") + (f" + {rounds} labelled round(s)" if rounds else "")


ROUND_PREFIX = "labelled:"


def is_round(name: str) -> bool:
    """Whether a frame name is a labelled round's (``data.labelled``)."""
    return name.startswith(ROUND_PREFIX)


def _infer_format(spec: FileSpec) -> str:
    if spec.format != "auto":
        return spec.format
    suffix = Path(spec.path).suffix.lower()
    formats = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
    formats.update(
        {".conll": "conll", ".bio": "conll", ".iob": "conll", ".parquet": "parquet", ".pq": "parquet"}
    )
    return formats.get(suffix, "csv")


def check_utf8(path: Path) -> Problem | None:
    """A problem naming the line and byte when ``path`` is not UTF-8 text (a Latin-1 export, say)."""
    data = path.read_bytes()
    if data.startswith((b"PK\x03\x04", b"\xd0\xcf\x11\xe0")) and path.suffix.lower() not in (
        ".parquet",
        ".pq",
    ):
        # A zip (.xlsx, .ods) or OLE (.xls) container: a workbook, whatever its name says.
        return Problem(
            "a spreadsheet workbook (Excel / OpenDocument), not text: save the sheet as CSV (UTF-8) and give "
            "the .csv file",
            file=str(path),
        )
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        return Problem(
            f"not UTF-8 text: byte 0x{data[exc.start]:02x} at column {column} (re-save the file as UTF-8)",
            file=str(path),
            line=line,
        )
    return None


def _record_lines(path: Path, fmt: str, header: bool) -> list[int]:
    """The file line on which each data record starts (quoted CSV fields may span several lines)."""
    with open(path, newline="", encoding="utf-8") as fh:
        tsv = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
        reader = csv.reader(fh, **(tsv if fmt == "tsv" else {}))
        starts, previous_end = [], 0
        for _ in reader:
            starts.append(previous_end + 1)
            previous_end = reader.line_num
    return starts[1:] if header else starts


def not_a_file(path: Path) -> Problem:
    """Why ``path`` cannot be read: it does not exist, or it is a folder (naming what the folder holds)."""
    if path.is_dir():
        files = sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        inside = f" (it holds {', '.join(files[:5])}{', ...' if len(files) > 5 else ''})" if files else ""
        return Problem(f"is a folder, not a file{inside}: give the path of one file", file=str(path))
    if path.exists():
        return Problem("is not a regular file (a named pipe, device or socket): give a file", file=str(path))
    return Problem("file not found", file=str(path))


def looks_like_data(columns: Iterable[Any]) -> bool:
    """Whether a header line reads like a record (a sentence, a number) rather than column names."""
    cols = [str(c) for c in columns]
    return any(
        len(c) > 40 or len(c.split()) > 3 or c.strip().lstrip("-").replace(".", "").isdigit() for c in cols
    )


def _header_hint(columns: Iterable[Any]) -> str:
    """A file without a header line has its first record read as column names: say so when they look like
    data (a sentence, a number) rather than names."""
    if not looks_like_data(columns):
        return ""
    return (
        " The first line is read as the header, and it looks like data: add a header line naming the columns "
        "(e.g. text,label), or set header: false and column_names: [text, label] for this file."
    )


def _delimiter_hint(columns: Iterable[Any]) -> str:
    cols = [str(c) for c in columns]
    for sep, name in ((";", "';'"), ("\t", "tab"), ("|", "'|'")):
        if len(cols) == 1 and sep in cols[0]:
            return (
                f" The header looks {name}-delimited but the file is read as comma-separated CSV: convert it"
                + (" or set format: tsv" if sep == "\t" else "")
                + "."
            )
    return ""


def read_jsonl(path: Path) -> tuple[pd.DataFrame | None, list[int], list[Problem]]:
    """JSON Lines with exact line numbers: blank lines are skipped, a broken line is named."""
    records, lines, problems = [], [], []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(
                    Problem(
                        f"invalid JSON: {exc.msg.removesuffix(' at')} at column {exc.colno}",
                        str(path),
                        number,
                    )
                )
                continue
            if not isinstance(record, dict):
                problems.append(
                    Problem(f"expected a JSON object, got {type(record).__name__}", str(path), number)
                )
                continue
            records.append(record)
            lines.append(number)
    if problems:
        return None, lines, problems
    return pd.DataFrame.from_records(records), lines, []


def read_frame(spec: FileSpec) -> tuple[pd.DataFrame | None, list[int], list[Problem]]:
    """Read a CSV/TSV/JSONL/Parquet file as it is.

    Returns:
        The frame (None when unreadable), the file line of each row (the row number for parquet), and the
        problems found (missing file, not UTF-8, unparsable, each with its line).
    """
    path = Path(spec.path)
    if not path.is_file():
        return None, [], [not_a_file(path)]
    fmt = _infer_format(spec)
    if fmt == "conll":
        return (
            None,
            [],
            [Problem("CoNLL files hold token tags: use task: token_classification", file=str(path))],
        )
    if fmt != "parquet":
        bad = check_utf8(path)
        if bad:
            return None, [], [bad]
    if fmt == "jsonl":
        return read_jsonl(path)
    try:
        if fmt in ("csv", "tsv"):
            df = pd.read_csv(
                path,
                sep="\t" if fmt == "tsv" else ",",
                # TSV corpora (SST-2, UCI sentences) have unbalanced quotes: " never quotes there.
                quoting=csv.QUOTE_NONE if fmt == "tsv" else csv.QUOTE_MINIMAL,
                header=0 if spec.header else None,
                names=spec.column_names,
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                skip_blank_lines=False,
            )
        else:
            df = pd.read_parquet(path)
    except Exception as exc:  # pandas raises many parser error types; all mean "unreadable"
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        line_match = re.search(r"line (\d+)", message)
        hint = ""
        if fmt == "csv":
            with open(path, encoding="utf-8") as fh:
                hint = _delimiter_hint([fh.readline()])
        problem = Problem(
            f"cannot read as {fmt}: {message}.{hint}".replace("..", "."),
            file=str(path),
            line=int(line_match[1]) if line_match else None,
        )
        return None, [], [problem]
    if fmt in ("csv", "tsv"):
        lines = _record_lines(path, fmt, spec.header)
        if len(lines) != len(df):  # pandas and csv disagree on an odd file: fall back to row numbers
            first = 2 if spec.header else 1
            lines = list(range(first, first + len(df)))
    else:
        lines = list(range(1, len(df) + 1))
    return df, lines, []


def missing_columns(df: pd.DataFrame, columns: Iterable[str], source: str) -> list[Problem]:
    """One problem per required column the frame lacks, listing the columns it has."""
    found = ", ".join(map(str, df.columns))
    hint = _delimiter_hint(df.columns) or _header_hint(df.columns)
    return [
        Problem(f"missing column (found: {found}).{hint}".rstrip("."), file=source, column=c)
        for c in columns
        if c not in df.columns
    ]


def read_columns(
    spec: FileSpec, columns: Iterable[str]
) -> tuple[pd.DataFrame | None, list[int], list[Problem]]:
    """:func:`read_frame`, then check the required ``columns``: the frame is None on any problem."""
    df, lines, problems = read_frame(spec)
    if df is None:
        return None, lines, problems
    problems = missing_columns(df, columns, spec.path)
    return (None if problems else df), lines, problems


def read_table(
    spec: FileSpec, text_column: str, label_column: str, label_names: str | None = None
) -> tuple[pd.DataFrame | None, list[Problem]]:
    """Read one file into a ``text``/``label``/``_line`` frame (label indices named by ``label_names``).

    Returns the frame (None when it cannot be read) and the problems found: a missing or unreadable file,
    missing columns, label indices the names file does not name. Other cell-level problems are left to
    :func:`tuneflow.data.validation.validate_dataset`.
    """
    df, lines, problems = read_columns(spec, (text_column, label_column))
    if df is None:
        return None, problems
    labels = df[label_column].map(_label_to_str)
    if label_names is not None:
        names, problems = read_label_names(label_names)
        if names is None:
            return None, problems
        named = labels.map(lambda x: name_label(x, names))
        bad = labels.notna() & named.isna()
        if bad.any():
            where = ", ".join([str(line) for line, b in zip(lines, bad, strict=True) if b][:10])
            return None, [
                Problem(
                    f"{int(bad.sum())} label(s) that are not an index into data.label_names "
                    f"(0-{len(names) - 1}) at line(s) {where}",
                    file=spec.path,
                    column=label_column,
                )
            ]
        labels = named
    return pd.DataFrame({TEXT: df[text_column], LABEL: labels, LINE: lines}), []


def read_label_names(path: str) -> tuple[list[str] | None, list[Problem]]:
    """The label names of ``data.label_names`` (one per line, blank lines skipped), or the problem found."""
    file = Path(path)
    if not file.is_file():
        return None, [not_a_file(file)]
    bad = check_utf8(file)
    if bad:
        return None, [bad]
    names = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if not names or duplicated:
        why = "names no label" if not names else f"names {', '.join(map(repr, duplicated))} twice"
        return None, [Problem(f"data.label_names {why}: one distinct label name per line", file=path)]
    return names, []


def name_label(value: str | None, names: list[str]) -> str | None:
    """The name of label index ``value`` ("3" -> names[3]); None when it is not an index into ``names``."""
    if value is None or not value.isdigit() or int(value) >= len(names):
        return None
    return names[int(value)]


def _label_to_str(value: Any) -> str | None:
    """Labels are strings everywhere (0/1 ints and "0"/"1" strings must mean the same class)."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


Reader = Callable[[FileSpec, DataConfig], tuple[pd.DataFrame | None, list[Problem]]]
"""A task type's file reader: one file's examples as a standard frame, or the problems found."""


def load_raw(cfg: DataConfig, read: Reader, hub: bool = False, task: str = "") -> RawData:
    """Read every configured source (local files or a hub dataset) without splitting or cleaning.

    Args:
        cfg: the data section.
        read: the task type's reader for one file.
        hub: whether the task type can read ``data.hub_dataset`` (text + label datasets).
        task: the task type's name (for the message when it cannot).
    """
    raw = RawData()
    if cfg.hub_dataset:
        if hub:
            _load_hub(cfg, raw)
        else:
            raw.problems.append(
                Problem(
                    f"data.hub_dataset is not read for {task}: use local files in data.train/validation/test"
                )
            )
    specs: dict[str, FileSpec] = {s: getattr(cfg, s) for s in SPLITS if getattr(cfg, s) is not None}
    specs.update({f"extra:{e.name}": e for e in cfg.extra_eval})
    specs.update({f"{ROUND_PREFIX}{spec.round_name}": spec for spec in cfg.labelled})
    for name, spec in specs.items():
        frame, problems = read(spec, cfg)
        raw.problems += problems
        raw.sources[name] = spec.path
        if frame is not None:
            raw.frames[name] = frame
    return raw


def _load_hub(cfg: DataConfig, raw: RawData) -> None:
    import datasets

    try:
        dsd = datasets.load_dataset(cfg.hub_dataset, cfg.hub_config)
    except Exception as exc:  # offline, unknown id, script dataset, ...
        raw.problems.append(
            Problem(
                f"cannot load hub dataset '{cfg.hub_dataset}': {type(exc).__name__}: {exc}. "
                "Without network access (HF_HUB_OFFLINE=1 here) use local files in "
                "data.train/validation/test."
            )
        )
        return
    aliases = {"train": ["train"], "validation": ["validation", "valid", "dev"], "test": ["test"]}
    for split, names in aliases.items():
        for n in names:
            if n in dsd:
                df = dsd[n].to_pandas()
                source = f"hf://{cfg.hub_dataset}/{n}"
                missing = [c for c in (cfg.text_column, cfg.label_column) if c not in df.columns]
                if missing:
                    raw.problems += [Problem("missing column", file=source, column=c) for c in missing]
                    break
                labels = df[cfg.label_column]
                feature = dsd[n].features.get(cfg.label_column)
                if hasattr(feature, "int2str"):  # ClassLabel: keep readable names
                    labels = labels.map(
                        lambda i, f=feature: f.int2str(int(i)) if i is not None and i >= 0 else None
                    )
                raw.frames[split] = pd.DataFrame(
                    {TEXT: df[cfg.text_column], LABEL: labels.map(_label_to_str), LINE: range(1, len(df) + 1)}
                )
                raw.sources[split] = source
                break


# ----------------------------------------------------------------------- other task types' formats


def read_conll(path: Path) -> tuple[list[tuple[int, list[str], list[str]]], list[Problem]]:
    """Sentences of a CoNLL/BIO file: ``(first line, words, tags)``.

    One ``token<whitespace>tag`` per line (the tag is the last field), sentences separated by a line that is
    empty or whitespace-only (WNUT-17 uses a single tab); ``-DOCSTART-`` lines are skipped.
    """
    sentences: list[tuple[int, list[str], list[str]]] = []
    problems: list[Problem] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                if words:
                    sentences.append((start, words, tags))
                words, tags = [], []
                continue
            parts = line.rstrip("\n").split("\t") if "\t" in line else line.split()
            parts = [p.strip() for p in parts if p.strip()]
            if parts and parts[0] == "-DOCSTART-":
                continue
            if len(parts) < 2:
                problems.append(Problem(f"expected 'token<TAB>tag', got {line.strip()!r}", str(path), number))
                continue
            if not words:
                start = number
            words.append(parts[0])
            tags.append(parts[-1])
    if words:
        sentences.append((start, words, tags))
    return sentences, problems


def read_tagged(spec: FileSpec, cfg: DataConfig) -> tuple[pd.DataFrame | None, list[Problem]]:
    """Read a CoNLL file or a JSONL file of ``{tokens, tags}`` into ``text``/``tokens``/``tags``/``_line``.

    Structural problems (a line without a tag, a sentence whose token and tag counts differ, a non-list
    cell) are returned with their file and line.
    """
    path = Path(spec.path)
    fmt = spec.format if spec.format != "auto" else None
    if fmt is None:
        fmt = "conll" if path.suffix.lower() in (".conll", ".bio", ".iob", ".txt", "") else "table"
    if fmt == "conll":
        if not path.is_file():
            return None, [not_a_file(path)]
        bad = check_utf8(path)
        if bad:
            return None, [bad]
        sentences, problems = read_conll(path)
        rows = [(line, words, tags) for line, words, tags in sentences]
    else:
        df, lines, problems = read_columns(spec, (cfg.tokens_column, cfg.tags_column))
        if df is None:
            return None, problems
        rows = []
        for line, words, tags in zip(lines, df[cfg.tokens_column], df[cfg.tags_column], strict=True):
            if not isinstance(words, list) or not isinstance(tags, list):
                problems.append(Problem("tokens and tags must be lists", spec.path, line))
                continue
            rows.append((line, [str(w) for w in words], [str(t) for t in tags]))
    frame_rows = []
    for line, words, tags in rows:
        if len(words) != len(tags):
            problems.append(Problem(f"{len(words)} tokens but {len(tags)} tags", spec.path, line))
            continue
        frame_rows.append({TEXT: " ".join(words), TOKENS: words, TAGS: tags, LINE: line})
    return pd.DataFrame(frame_rows, columns=[TEXT, TOKENS, TAGS, LINE]), problems


def message_problems(messages: Any) -> list[str]:
    """What is wrong with one conversation (empty list, unknown role, non-text content, no assistant turn)."""
    if not isinstance(messages, list) or not messages:
        return ["messages must be a non-empty list of {role, content}"]
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            role = m.get("role") if isinstance(m, dict) else m
            out.append(f"message {i + 1}: role {role!r} is not one of {', '.join(ROLES)}")
        elif not isinstance(m.get("content"), str) or not m["content"].strip():
            out.append(f"message {i + 1}: content must be non-empty text")
    if not out and not any(m["role"] == "assistant" for m in messages):
        out.append("no assistant message: nothing to learn from")
    return out


def read_chats(spec: FileSpec, cfg: DataConfig) -> tuple[pd.DataFrame | None, list[Problem]]:
    """Read chat JSONL into ``text`` (all contents, for duplicate/leakage checks), ``messages``, ``_line``."""
    df, lines, problems = read_columns(spec, (cfg.messages_column,))
    if df is None:
        return None, problems
    rows = []
    for line, messages in zip(lines, df[cfg.messages_column], strict=True):
        errors = message_problems(messages)
        if errors:
            problems += [Problem(e, spec.path, line, cfg.messages_column) for e in errors]
            continue
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        rows.append({TEXT: "\n".join(m["content"] for m in messages), MESSAGES: messages, LINE: line})
    return pd.DataFrame(rows, columns=[TEXT, MESSAGES, LINE]), problems


def read_instructions(spec: FileSpec, cfg: DataConfig) -> tuple[pd.DataFrame | None, list[Problem]]:
    """Read source/target rows as one user/assistant exchange each (``data.prompt_template``).

    The user message is the template with ``{source}`` filled in (the source cut to
    ``data.max_source_words``), the assistant message the first target; ``references`` keeps every
    target for evaluation.
    """
    df, problems = read_pairs(spec, cfg)
    if df is None:
        return None, problems
    template = cfg.prompt_template or "{source}"
    rows = []
    for line, source, target, refs in zip(df[LINE], df[TEXT], df[TARGET], df[REFERENCES], strict=True):
        if not isinstance(source, str) or not isinstance(target, str):
            column = cfg.source_column if not isinstance(source, str) else cfg.target_column
            problems.append(Problem("empty text: nothing to learn from", spec.path, line, column))
            continue
        if cfg.max_source_words:
            source = " ".join(source.split()[: cfg.max_source_words])
        messages = [
            {"role": "user", "content": template.replace("{source}", source)},
            {"role": "assistant", "content": target},
        ]
        rows.append({TEXT: f"{source}\n{target}", MESSAGES: messages, REFERENCES: refs, LINE: line})
    return pd.DataFrame(rows, columns=[TEXT, MESSAGES, REFERENCES, LINE]), problems


_BLANK = re.compile(r"[\s\u00ad\u180e\u200b-\u200d\u2060\ufeff]*")


def blank(text: Any) -> bool:
    """No text to learn from: not a string, or only whitespace and invisible characters (zero-width spaces
    and joiners, soft hyphens, byte-order marks, which ``str.strip`` keeps)."""
    return not isinstance(text, str) or _BLANK.fullmatch(text) is not None


def _as_text(value: Any) -> str | None:
    if isinstance(value, list):
        value = " ".join(str(v).strip() for v in value)
    return None if blank(value) else value.strip()


def read_pairs(spec: FileSpec, cfg: DataConfig) -> tuple[pd.DataFrame | None, list[Problem]]:
    """Read source/target pairs; a list-valued source is joined, a list-valued target holds references."""
    df, lines, problems = read_columns(spec, (cfg.source_column, cfg.target_column))
    if df is None:
        return None, problems
    rows = []
    for line, source, target in zip(lines, df[cfg.source_column], df[cfg.target_column], strict=True):
        refs = [t for t in (target if isinstance(target, list) else [target])]
        refs = [r for r in (_as_text(t) for t in refs) if r]
        rows.append({TEXT: _as_text(source), TARGET: refs[0] if refs else None, REFERENCES: refs, LINE: line})
    return pd.DataFrame(rows, columns=[TEXT, TARGET, REFERENCES, LINE]), problems
