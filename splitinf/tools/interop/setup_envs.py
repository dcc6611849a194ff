"""Create (once) the virtual environments of the third-party V2 servers the interop tests run.

    python -m splitinf.tools.interop.setup_envs            # all of them
    python -m splitinf.tools.interop.setup_envs mlserver   # one

Each environment lives at ``$SPLITINF_INTEROP_CACHE`` (default ``~/.cache/splitinf-interop``) under a
directory named by the server and a hash of its pinned requirements and the Python version, so a new pin
makes a new environment and an unchanged one is reused (CI installs each once). A ``ready`` file written
after a successful install marks it complete; a half-made one is removed and made again.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SERVERS", "ServerEnv", "cache_root", "ensure_env"]


@dataclass(frozen=True)
class ServerEnv:
    name: str
    requirements: tuple[str, ...]
    interpreter: str | None = None  # the Python to make the venv with; None: the one running this

    @property
    def key(self) -> str:
        python = self.interpreter or f"python {sys.version_info[0]}.{sys.version_info[1]}"
        text = "\n".join((*self.requirements, python))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def path(self) -> Path:
        return cache_root() / f"{self.name}-{self.key}"

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def ready(self) -> bool:
        return (self.path / "ready").is_file() and self.python.is_file()


# The server package first (its pin names the environment in reports), then onnxruntime to run the tails.
SERVERS: dict[str, ServerEnv] = {
    "mlserver": ServerEnv("mlserver", ("mlserver==1.7.1", "onnxruntime==1.32.0")),
    "kserve": ServerEnv("kserve", ("kserve==0.21.0", "onnxruntime==1.32.0")),
    # Triton's Python-backend stub links the system's libpython3.11 (Debian's 3.11.2) and runs the venv's
    # standard library: a venv of another 3.11 build (pyenv's 3.11.7) fails in multiprocessing at model load.
    "pytriton": ServerEnv("pytriton", ("nvidia-pytriton==0.7.0", "onnxruntime==1.32.0"), "/usr/bin/python3.11"),
}


def cache_root() -> Path:
    return Path(os.environ.get("SPLITINF_INTEROP_CACHE") or Path.home() / ".cache" / "splitinf-interop")


def ensure_env(env: ServerEnv, *, quiet: bool = True) -> Path:
    """The environment's python, installing the environment first when it is not complete."""
    if env.ready:
        return env.python
    if env.path.exists():
        shutil.rmtree(env.path)
    env.path.parent.mkdir(parents=True, exist_ok=True)
    if env.interpreter is None:
        venv.EnvBuilder(with_pip=True, clear=True).create(env.path)
    elif not Path(env.interpreter).is_file():
        raise OSError(f"{env.name} needs {env.interpreter} (apt-get install python3-venv), which is missing")
    else:
        subprocess.run([env.interpreter, "-m", "venv", "--clear", str(env.path)], check=True)
    command = [str(env.python), "-m", "pip", "install", "--disable-pip-version-check", *env.requirements]
    if quiet:
        command.insert(4, "-q")
    subprocess.run(command, check=True)
    (env.path / "ready").write_text("\n".join(env.requirements) + "\n")
    return env.python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    parser.add_argument("servers", nargs="*", choices=[[], *SERVERS], help="default: all")
    args = parser.parse_args(argv)
    for name in args.servers or list(SERVERS):
        env = SERVERS[name]
        state = "cached" if env.ready else "installing"
        print(f"{name} ({' '.join(env.requirements)}): {state} at {env.path}", flush=True)
        try:
            ensure_env(env)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"cannot create the {name} environment: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
