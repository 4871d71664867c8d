import os

# One BLAS thread per process, unless the environment says otherwise. The product runs many processes (web, ingest,
# metrics and analysis workers, PostgreSQL) on few cores; OpenBLAS starts one thread per core in every process that
# multiplies matrices, and they spin waiting for work, taking the CPU the others need (docs/benchmarks.md, the open
# analyses' first answer). Set here, before anything imports NumPy.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

from .celery import app as celery_app  # noqa: E402

__all__ = ("celery_app",)
