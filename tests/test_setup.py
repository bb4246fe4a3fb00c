"""Set-up that does not rot: the README's install into a fresh venv, then ``twistd`` finds the plugin.

``scripts/setup`` (what ``./scripts/run`` runs first) runs as the README runs it, in a copy of the
checkout, into a fresh ``.venv``. To stay fast and spare the network the heavy wheels (chDB,
pyarrow), the fresh venv sees the packages of the venv running this test through a directory of
links named by a ``.pth`` file - leaving out what the set-up itself installs: pip, setuptools,
Twisted (so the plugin directory is the fresh venv's own) and sfpltracker. pip then finds every
other dependency satisfied and fetches only Twisted and setuptools for its isolated build
(from its cache after the first run). Nothing is written into the running venv.

What must hold: the set-up succeeds and prints no deprecation warning (setuptools' ``compat``
editable mode, which it will remove, and ``project.license`` as a table were both printed at
every set-up); ``.venv/bin/twistd --help``, run outside the checkout, lists ``sfpltracker``; the
plugin loads (``twistd sfpltracker --help``) the checkout's code.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.gateway_process import ROOT

# What scripts/setup needs of a checkout (pyproject's readme, license-files and packages).
INSTALLED = ("pyproject.toml", "README.md", "LICENSE", "scripts", "sfpltracker", "twisted")
# Installed by the set-up itself into the fresh venv, so never lent from the running one.
OWN = ("pip", "setuptools", "_distutils_hack", "pkg_resources", "twisted", "sfpltracker")


def lent(name: str) -> bool:
    lower = name.lower()
    if lower.endswith(".pth") or lower.startswith("__"):  # import hooks, editable finders
        return False
    return not any(lower == own or lower.startswith(own + "-") for own in OWN)


def copy_checkout(target: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache")
    for name in INSTALLED:
        source = ROOT / name
        if not source.exists():
            continue  # pyproject says what it needs; a missing file fails the install itself
        if source.is_dir():
            shutil.copytree(source, target / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(source, target / name)


def fresh_venv(checkout: Path, lending: Path) -> Path:
    """``checkout/.venv``, seeing the running venv's packages (less ``OWN``) through links."""
    site = Path(sysconfig.get_paths()["purelib"])
    lending.mkdir()
    for entry in site.iterdir():
        if lent(entry.name):
            (lending / entry.name).symlink_to(entry)
    venv = checkout / ".venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    fresh_site = Path(
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (fresh_site / "_sfpl_lent_packages.pth").write_text(f"{lending}\n")
    return venv


def clean_env() -> dict[str, str]:
    """The user's environment, less what would point Python at another tree or venv."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONWARNINGS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no .pyc written through the links into the lender
    return env


def plugins_of_running_venv() -> list[str]:
    import twisted.plugins

    return sorted(
        p.name for p in Path(twisted.plugins.__file__).parent.iterdir() if p.suffix == ".py"
    )


def test_the_readme_install_lists_the_twistd_plugin(tmp_path):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    copy_checkout(checkout)
    venv = fresh_venv(checkout, tmp_path / "lent")
    before = plugins_of_running_venv()

    setup = subprocess.run(
        ["bash", "scripts/setup"],
        cwd=checkout,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = setup.stdout + setup.stderr
    assert setup.returncode == 0, output
    # what setuptools prints of what it will stop doing (compat mode, the license table)
    assert not re.search(r"deprecat|will be removed|no longer be supported", output, re.I), output

    # from elsewhere: the checkout is not the working directory, nothing on PYTHONPATH
    twistd = str(venv / "bin" / "twistd")
    listing = subprocess.run(
        [twistd, "--help"], cwd="/", env=clean_env(), capture_output=True, text=True, timeout=120
    )
    assert listing.returncode == 0, listing.stderr
    assert any(line.split()[:1] == ["sfpltracker"] for line in listing.stdout.splitlines()), (
        listing.stdout
    )
    plugin = subprocess.run(
        [twistd, "sfpltracker", "--help"],
        cwd="/",
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plugin.returncode == 0 and "--config" in plugin.stdout, plugin.stdout + plugin.stderr
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sfpltracker.tap as t; print(t.__file__)"],
        cwd="/",
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert where.stdout.strip().startswith(str(checkout / "sfpltracker")), where

    assert plugins_of_running_venv() == before  # the running venv was only read


def test_the_dockerfile_installs_every_store_extra():
    # The image installed ".", without the duckdb extra: Type "duckdb" failed at start in it.
    import tomllib

    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    stores = extras - {"test"}
    assert "duckdb" in stores
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = re.findall(r"pip install [^\n]*?\"?\.\[([\w,\s-]+)\]\"?", dockerfile)
    assert installs, "the Dockerfile's pip install names no extras"
    named = {e.strip() for group in installs for e in group.split(",")}
    assert stores <= named, f"the Dockerfile installs {sorted(named)}, not {sorted(stores - named)}"
