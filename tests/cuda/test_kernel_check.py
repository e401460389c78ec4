"""The elementwise CUDA kernels without onnxruntime (tests/cuda/elementwise_kernel_check.cu):
every op x float32/float16/bfloat16 x sizes x bias lengths x pointer offsets against the same
scalar functors on the host, bit for bit, with guards around the output. Built here with nvcc
for the GPU's own architecture. The memcheck variant caps the grid at 7 blocks (every
grid-stride path runs on small tensors) and runs under compute-sanitizer."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SOURCE = REPO / "tests" / "cuda" / "elementwise_kernel_check.cu"


def build(tmp_path, *defines: str) -> str:
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.access("/usr/local/cuda/bin/nvcc", os.X_OK) else None)
    if nvcc is None:
        pytest.fail("nvcc not found (PATH, /usr/local/cuda/bin): needed to build the kernel check", pytrace=False)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        pytest.fail("nvidia-smi not found: needed for the GPU's compute capability", pytrace=False)
    cap = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                         text=True, timeout=60)
    if cap.returncode != 0 or not cap.stdout.strip():
        pytest.fail(f"nvidia-smi could not report the GPU's compute capability: {cap.stderr[-500:]}", pytrace=False)
    arch = cap.stdout.split()[0].replace(".", "")
    exe = str(tmp_path / "kcheck")
    cmd = [nvcc, "-std=c++17", "-O3", "--fmad=false", "-lineinfo", "-Xcompiler", "-ffp-contract=off",
           f"-I{REPO / 'custom_ops'}", f"-gencode=arch=compute_{arch},code=sm_{arch}", *defines, str(SOURCE), "-o", exe]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"nvcc failed: {' '.join(cmd)}\n{p.stderr[-3000:]}"
    return exe


@pytest.mark.cuda
def test_elementwise_kernels_bit_exact(tmp_path):
    exe = build(tmp_path)
    p = subprocess.run([exe, "check"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]


@pytest.mark.memcheck
def test_elementwise_kernels_memcheck(tmp_path, memcheck):
    exe = build(tmp_path, "-DN6_CUDA_TEST_MAX_BLOCKS=7")
    memcheck([exe, "check"])
