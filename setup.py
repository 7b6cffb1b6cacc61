"""The one build step pyproject.toml cannot declare: compile the message catalogs.

Every `src/mamoru/locale/<lang>/LC_MESSAGES/mamoru.po` becomes the `.mo` gettext reads, in the
built package (a wheel, `pip install .`) or, for an editable install, next to the `.po`.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SRC = Path(__file__).resolve().parent / "src"


def compile_catalogs(target_root: Path) -> list[str]:
    """Compile every catalog under src/mamoru/locale into `target_root`/mamoru/locale."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    written = []
    for po in sorted((SRC / "mamoru" / "locale").glob("*/LC_MESSAGES/*.po")):
        mo = target_root / po.relative_to(SRC).with_suffix(".mo")
        mo.parent.mkdir(parents=True, exist_ok=True)
        with po.open("rb") as source:
            catalog = read_po(source)
        with mo.open("wb") as out:
            write_mo(out, catalog, use_fuzzy=False)
        written.append(str(mo))
    return written


class BuildWithCatalogs(build_py):
    def run(self) -> None:
        super().run()
        editable = getattr(self, "editable_mode", False)
        compile_catalogs(SRC if editable else Path(self.build_lib))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs: list[str] = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            outputs += [str(Path(self.build_lib) / po.relative_to(SRC).with_suffix(".mo"))
                        for po in (SRC / "mamoru" / "locale").glob("*/LC_MESSAGES/*.po")]
        return outputs


setup(cmdclass={"build_py": BuildWithCatalogs})
