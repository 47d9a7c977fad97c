"""The built-in recipes, shipped inside the package: `phiforge run tiny` works from an installed wheel.

A recipe argument is a YAML file when one exists at that path, else the name of a built-in recipe.
Relative paths inside a built-in recipe (e.g. phi4's `data/web.jsonl`) resolve against the working
directory, since nothing of the user's lives next to the package.
"""

from __future__ import annotations

from pathlib import Path

from phiforge.errors import UserError

BUILTIN_DIR = Path(__file__).parent


def builtin() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def locate(recipe: Path | str) -> Path:
    """The recipe file for RECIPE: an existing file, or the built-in recipe of that name."""
    path = Path(recipe)
    if path.exists():
        return path
    named = BUILTIN_DIR / f"{path.name}.yaml"
    if path.parent == Path(".") and path.suffix == "" and named.is_file():
        return named
    raise UserError(f"{recipe}: recipe file not found, and no built-in recipe has that name "
                    f"(built in: {', '.join(builtin())}; `phiforge recipes show NAME > my.yaml` starts one)")
