"""Which of the repository's sources the clients' wheel ships, beside their .proto files.

The packages live one level up (the repository root and gen/), where the servers'
distribution builds from too; of servicekit only the client side is taken, which the
import-linter contract in ../pyproject.toml keeps free of server-only imports.
"""

import shutil
from pathlib import Path

# setuptools ships no type hints, and types-setuptools is not in the dev extra.
from setuptools import setup  # type: ignore[import-untyped]
from setuptools.command.build_py import build_py  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
# servicekit.client and what it imports, down to the JWT minting of service tokens.
CLIENT_SIDE_SERVICEKIT = {
    "__init__",
    "call_context",
    "calls",
    "client",
    "contract",
    "credentials",
    "errors",
    "jwt",
    "settings",
    "status",
    "tls",
}


class BuildClients(build_py):  # type: ignore[misc]  # build_py is untyped (above)
    """Leaves servicekit's server-side modules out, and puts each .proto beside its stubs
    (inventory/v1/inventory.proto), where `protoc -I <site-packages>` finds it under the
    name other protos import it by."""

    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        modules: list[tuple[str, str, str]] = super().find_package_modules(package, package_dir)
        if package != "servicekit":
            return modules
        return [(pkg, name, path) for pkg, name, path in modules if name in CLIENT_SIDE_SERVICEKIT]

    def run(self) -> None:
        shutil.rmtree(self.build_lib, ignore_errors=True)  # a module dropped from the lists leaves no stale copy
        super().run()
        for proto in sorted((ROOT / "protos").rglob("*.proto")):
            self.copy_file(str(proto), str(Path(self.build_lib) / proto.relative_to(ROOT / "protos")))


setup(
    packages=["inventory_client", "crm_client", "servicekit", "inventory", "inventory.v1", "crm", "crm.v1"],
    package_dir={
        "inventory_client": "../inventory_client",
        "crm_client": "../crm_client",
        "servicekit": "../servicekit",
        "inventory": "../gen/inventory",
        "crm": "../gen/crm",
    },
    package_data={"": ["py.typed", "*.pyi"]},
    cmdclass={"build_py": BuildClients},
)
