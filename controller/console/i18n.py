"""The console's message catalogue: Swedish and English from the .po files in
`locale/`, read at run time with Babel (no compile step). Templates call `_()`; the
language of the request being rendered is held in a context variable."""

from __future__ import annotations

import contextvars
from functools import cache
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel.messages.pofile import read_po

LOCALE_DIR = Path(__file__).parent / "locale"
LANGUAGES = ("en", "sv")
DEFAULT = "en"

_current: contextvars.ContextVar[str] = contextvars.ContextVar("console_lang", default=DEFAULT)


@cache
def catalogue(lang: str) -> dict[str, str]:
    """msgid -> msgstr of one language; an empty msgstr falls back to the msgid."""
    with (LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po").open("rb") as fh:
        cat = read_po(fh, locale=lang)
    return {str(m.id): str(m.string) for m in cat if m.id and m.string}


def set_language(lang: str) -> None:
    _current.set(lang if lang in LANGUAGES else DEFAULT)


def language() -> str:
    return _current.get()


def gettext(message: str) -> str:
    return catalogue(_current.get()).get(message, message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return gettext(singular if n == 1 else plural)


def negotiate(accept_language: str | None) -> str:
    """The best of our languages for an Accept-Language header (default English)."""
    if not accept_language:
        return DEFAULT
    weighted: list[tuple[float, str]] = []
    for part in accept_language.split(",")[:20]:
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if tag and tag != "*":
            weighted.append((q, tag.strip().replace("-", "_")))
    preferred = [tag for _q, tag in sorted(weighted, key=lambda x: -x[0])]
    try:
        found = Locale.negotiate(preferred, list(LANGUAGES), sep="_")
    except (UnknownLocaleError, ValueError):
        found = None
    return found.language if found is not None else DEFAULT
