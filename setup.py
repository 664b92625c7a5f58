from setuptools import setup

setup(
    name="mmin-plugin",
    version="0.1.0",
    description="MMIN (Fang, Liu, Zhang, ICASSP 2024) as a model of the MMSA 2.2.1 toolkit",
    packages=["mmin_plugin", "mmin_reference"],
    package_dir={"mmin_plugin": "mmin_plugin", "mmin_reference": "reference"},
    package_data={"mmin_plugin": ["registry.json"]},
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
    ],
    extras_require={
        "test": ["pytest", "hypothesis"],
        "bench": ["entmax"],
    },
    entry_points={"console_scripts": ["mmin-plugin=mmin_plugin.cli:main"]},
)
