"""The build step pyproject.toml cannot declare: compile liblogpool.so (build_ffi.py, cffi in
embedding mode) and carry the public header and the OpenResty module inside the package, so
that a wheel or a non-editable `pip install .` has everything (logpool/include, logpool/lua).
Build with the interpreter that will run it (`pip install --no-build-isolation .` from the
target venv); an installed library starts the python of its own site-packages."""
import os
import shutil
import subprocess
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))


class BuildWithLibrary(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return  # an editable install uses the source tree's own build (make build)
        package = os.path.join(self.build_lib, "logpool")
        subprocess.run([sys.executable, os.path.join(ROOT, "build_ffi.py"),
                        f"--out={os.path.join(package, 'liblogpool.so')}"], check=True)
        for name in ("include", "lua"):
            target = os.path.join(package, name)
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(os.path.join(ROOT, name), target)


setup(cmdclass={"build_py": BuildWithLibrary})
