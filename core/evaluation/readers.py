"""Reader sessions: a clinician's blinded reading of a run's test films, kept as ``readers/<reader>-<time>.json`` in the run folder.

A reader reads ``n`` of the run's test films, drawn stratified by class with a seed (the same seed
draws the same films for every reader, so readers can be compared film by film). For each film they
give a call (NORMAL or PNEUMONIA) and a confidence from 1 (a guess) to 5 (certain); the two make one
10-level score, from "certainly normal" (1) to "certainly pneumonia" (10), the ordinal rating a
reader's ROC curve is drawn from (Obuchowski 2005, doi:10.2214/ajr.184.2.01840364). Each answer is
saved as it is given, so an interrupted session resumes where it stopped. A session holds film ids
(paths relative to the repository where they lie inside it), their sha256, the label and the model's
probability from ``metrics.json`` and the answers: nothing read from DICOM tags. A new session never
overwrites a saved one: the name takes a suffix.
"""
from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.data.datasets import CLASS_NAMES
from core.data.decode import ImageLoadError
from core.data.images import source_digest
from core.data.sample import local_path, portable_path
from core.store.files import atomic_write_text

__all__ = ["READERS_DIR", "CONFIDENCE_LEVELS", "ReaderError", "Film", "Answer", "ReaderSession", "reader_slug",
           "rating", "choose_films", "film_problem", "start_session", "save_session", "load_session",
           "list_sessions", "resumable_session"]

READERS_DIR = "readers"
CONFIDENCE_LEVELS = (1, 2, 3, 4, 5)  # 1: a guess … 5: certain
VERSION = 1
_NAME = re.compile(r"[^\w-]+")


class ReaderError(ValueError):
    """A reader session cannot be started, read or answered; the message is one sentence for the user."""


def _now_iso(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() if now is None else now))


def rating(call: int, confidence: int) -> int:
    """The 10-level score of a call and a confidence: 1 = certainly normal … 5 = normal, a guess;
    6 = pneumonia, a guess … 10 = certainly pneumonia."""
    if call not in (0, 1) or confidence not in CONFIDENCE_LEVELS:
        raise ReaderError(f"an answer is a call (0 or 1) and a confidence from 1 to 5, not {call!r} and {confidence!r}")
    return 5 + confidence if call == 1 else 6 - confidence


@dataclass(frozen=True)
class Film:
    """One film of a session: its id (a portable path), content hash, true label and the model's probability."""

    film: str
    sha256: str
    label: int
    probability: float

    @property
    def name(self) -> str:
        """The file name (a MedMNIST reference keeps its index)."""
        path, _, index = self.film.partition("::")
        return Path(path).name + (f"::{index}" if index else "")


@dataclass(frozen=True)
class Answer:
    """A reader's answer on one film."""

    film: str
    call: int  # 0 NORMAL, 1 PNEUMONIA
    confidence: int  # 1 … 5
    answered_at: str = ""

    def __post_init__(self) -> None:
        rating(self.call, self.confidence)  # refuses an out-of-range answer

    @property
    def score(self) -> int:
        return rating(self.call, self.confidence)

    def to_dict(self) -> dict[str, Any]:
        return {"film": self.film, "call": CLASS_NAMES[self.call], "confidence": self.confidence,
                "score": self.score, "answered_at": self.answered_at}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Answer":
        call = raw["call"]
        call = CLASS_NAMES.index(call) if isinstance(call, str) else int(call)
        return cls(str(raw["film"]), call, int(raw["confidence"]), str(raw.get("answered_at", "")))


@dataclass
class ReaderSession:
    """One reader's reading of a set of films: what was shown, what they answered, and where it is saved."""

    name: str  # the file's stem: ``<reader>-<YYYYmmdd-HHMMSS>`` (with a suffix if that was taken)
    reader: str
    run_id: str
    films: list[Film]
    seed: int
    created_at: str
    operating_point: dict[str, Any] = field(default_factory=dict)  # the threshold in use while reading
    answers: list[Answer] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # films that could not be shown: {film, reason}
    updated_at: str = ""
    finished_at: str | None = None
    path: Path | None = None  # not saved

    @property
    def answered(self) -> dict[str, Answer]:
        return {a.film: a for a in self.answers}

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def next_film(self) -> Film | None:
        """The first film neither answered nor skipped, or None when the reading is over."""
        done = set(self.answered) | {s["film"] for s in self.skipped}
        return next((f for f in self.films if f.film not in done), None)

    def position(self) -> int:
        """How many films are behind the reader (answered or skipped)."""
        return len(self.answers) + len(self.skipped)

    def _close_if_done(self, now: float | None) -> None:
        self.updated_at = _now_iso(now)
        self.finished_at = self.updated_at if self.next_film() is None else None

    def answer(self, film: str, call: int, confidence: int, now: float | None = None) -> Answer:
        """Record the answer on ``film`` (replacing an earlier one on it); the session finishes with its last film."""
        if film not in {f.film for f in self.films}:
            raise ReaderError(f"film {film} is not part of session {self.name}")
        given = Answer(film, int(call), int(confidence), _now_iso(now))
        self.answers = [a for a in self.answers if a.film != film] + [given]
        self._close_if_done(now)
        return given

    def skip(self, film: str, reason: str, now: float | None = None) -> None:
        """Leave a film that cannot be shown (gone or changed) out of the reading, saying why."""
        self.skipped = [s for s in self.skipped if s["film"] != film] + [{"film": film, "reason": reason}]
        self._close_if_done(now)

    def undo(self, now: float | None = None) -> Answer | None:
        """Take back the last answer (the reader reads that film again)."""
        if not self.answers:
            return None
        last = self.answers.pop()
        self._close_if_done(now)
        return last

    def to_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "name": self.name, "reader": self.reader, "run_id": self.run_id,
                "created_at": self.created_at, "updated_at": self.updated_at, "finished_at": self.finished_at,
                "seed": self.seed, "n": len(self.films), "operating_point": self.operating_point,
                "films": [asdict(f) for f in self.films], "answers": [a.to_dict() for a in self.answers],
                "skipped": self.skipped}

    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: Path | None = None) -> "ReaderSession":
        films = [Film(str(f["film"]), str(f.get("sha256", "")), int(f["label"]), float(f["probability"]))
                 for f in raw["films"]]
        return cls(name=str(raw["name"]), reader=str(raw["reader"]), run_id=str(raw.get("run_id", "")), films=films,
                   seed=int(raw.get("seed", 0)), created_at=str(raw.get("created_at", "")),
                   operating_point=dict(raw.get("operating_point") or {}),
                   answers=[Answer.from_dict(a) for a in raw.get("answers", [])],
                   skipped=[{"film": str(s["film"]), "reason": str(s.get("reason", ""))}
                            for s in raw.get("skipped", [])],
                   updated_at=str(raw.get("updated_at", "")), finished_at=raw.get("finished_at"), path=path)


def reader_slug(reader: str) -> str:
    """The reader's name as a file-safe slug: lower case, letters, digits, '-', '_' ("Dr. A" and "dr a" are one reader).

    Raises:
        ReaderError: nothing of the name is left.
    """
    slug = _NAME.sub("-", str(reader).strip().lower()).strip("-_")[:40]
    if not slug:
        raise ReaderError("a reader needs a name of letters or digits (initials will do)")
    return slug


def choose_films(predictions: Sequence[dict[str, Any]], n: int, seed: int = 0) -> list[Film]:
    """``n`` films of a run's test predictions (metrics.json's ``{file, label, probability}``), stratified by class.

    The draw is scikit-learn's stratified ``train_test_split`` with ``seed``, so the class mix follows the
    test split's and the same seed draws the same films in the same order. Only films that exist are drawn.

    Raises:
        ReaderError: ``n`` is out of range, the films hold one class only, or a drawn film cannot be read.
    """
    from sklearn.model_selection import train_test_split  # heavy: scikit-learn

    pool = [p for p in predictions if p.get("probability") is not None
            and os.path.isfile(local_path(str(p["file"])).split("::")[0])]
    labels = [int(p["label"]) for p in pool]
    if len(set(labels)) < 2:
        raise ReaderError(f"a reader study needs test films of both classes; {len(pool)} films can be read, "
                          f"of {len(set(labels))} class")
    if not 2 <= n <= len(pool):
        raise ReaderError(f"choose between 2 and {len(pool)} films to read (the test films that can be read)")
    if n == len(pool):
        order = list(np.random.default_rng(seed).permutation(len(pool)))
    else:
        try:
            order, _ = train_test_split(list(range(len(pool))), train_size=n, stratify=labels, random_state=seed)
        except ValueError as exc:  # a class too small to stratify
            raise ReaderError(f"{n} films cannot be drawn stratified by class from these test films: {exc}") from None
    films = []
    for i in order:
        source = local_path(str(pool[i]["file"]))
        try:
            digest = source_digest(source)
        except (ImageLoadError, OSError) as exc:
            raise ReaderError(f"test film {portable_path(source)} cannot be read: {exc}") from None
        films.append(Film(portable_path(source), digest, int(pool[i]["label"]), float(pool[i]["probability"])))
    return films


def film_problem(film: Film) -> str | None:
    """Why a session's film can no longer be shown ("no longer exists", "has changed"), or None when it can."""
    try:
        digest = source_digest(local_path(film.film))
    except (ImageLoadError, OSError):
        return "no longer exists"
    if film.sha256 and digest != film.sha256:
        return "has changed since the session began (its content is not the film that was drawn)"
    return None


def _folder(run: Any) -> Path:
    return Path(run.path) / READERS_DIR


def _reserve(folder: Path, base: str) -> Path:
    """A new file ``<base>.json`` (else ``<base>-2.json``, …), made exclusively: no saved session is overwritten."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        path = folder / (f"{base}.json" if n == 1 else f"{base}-{n}.json")
        try:
            with open(path, "x"):
                return path
        except FileExistsError:
            n += 1


def start_session(run: Any, reader: str, predictions: Sequence[dict[str, Any]], n: int, seed: int = 0,
                  operating_point: dict[str, Any] | None = None, now: float | None = None) -> ReaderSession:
    """Draw the films, create ``readers/<reader>-<YYYYmmdd-HHMMSS>.json`` (a suffix when taken) and save it.

    Raises:
        ReaderError: the name or the number of films cannot be used (see :func:`reader_slug`, :func:`choose_films`).
    """
    slug = reader_slug(reader)
    films = choose_films(predictions, n, seed)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    path = _reserve(_folder(run), f"{slug}-{stamp}")
    session = ReaderSession(name=path.stem, reader=slug, run_id=Path(run.path).name, films=films, seed=int(seed),
                            created_at=_now_iso(now), operating_point=dict(operating_point or {}),
                            updated_at=_now_iso(now), path=path)
    save_session(session)
    return session


def save_session(session: ReaderSession) -> None:
    """Write the session to its own file, atomically (readers see the old or the new answers, never half)."""
    if session.path is None:
        raise ReaderError(f"session {session.name} has no file: start it with start_session")
    atomic_write_text(session.path, json.dumps(session.to_dict(), indent=1))


def load_session(run: Any, name: str) -> ReaderSession:
    """One saved session of the run.

    Raises:
        ReaderError: there is no such session, or its file cannot be read.
    """
    path = _folder(run) / f"{Path(name).stem}.json"
    try:
        return ReaderSession.from_dict(json.loads(path.read_text()), path)
    except FileNotFoundError:
        raise ReaderError(f"run {Path(run.path).name} has no reader session {name!r}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReaderError(f"reader session {path.name} cannot be read ({type(exc).__name__}: {exc})") from None


def list_sessions(run: Any) -> tuple[list[ReaderSession], list[str]]:
    """The run's reader sessions, newest first, and a sentence for each file that cannot be read."""
    folder = _folder(run)
    sessions, problems = [], []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            sessions.append(load_session(run, path.stem))
        except ReaderError as exc:
            problems.append(str(exc))
    sessions.sort(key=lambda s: (s.created_at, s.name), reverse=True)
    return sessions, problems


def resumable_session(run: Any, reader: str) -> ReaderSession | None:
    """The newest unfinished session of ``reader`` (by its slug), or None."""
    slug = reader_slug(reader)
    return next((s for s in list_sessions(run)[0] if s.reader == slug and not s.finished), None)
