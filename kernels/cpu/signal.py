"""Signal kernels: DFT, STFT, Hann/Hamming/Blackman windows and MelWeightMatrix."""

from __future__ import annotations

import numpy as np
from onnx.helper import tensor_dtype_to_np_dtype

from modelloader.kernels.cpu._registry import kernel


def _to_complex(x: np.ndarray) -> np.ndarray:
    """[..., 1] real or [..., 2] (re, im) -> complex array without the last axis."""
    # Single precision stays single precision (NumPy >= 2 FFTs in complex64), as the spec's
    # reference results are computed that way.
    ct = np.complex128 if x.dtype == np.float64 else np.complex64
    c = x[..., 0].astype(ct)
    if x.shape[-1] == 2:
        c = c + ct(1j) * x[..., 1].astype(ct)
    return c


def _from_complex(c: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.stack([c.real, c.imag], axis=-1).astype(dtype)


@kernel("DFT")
def dft(
    x: np.ndarray,
    dft_length: np.ndarray | None = None,
    axis: np.ndarray | None = None,
    *,
    inverse: int = 0,
    onesided: int = 0,
) -> np.ndarray:
    """ONNX DFT-20: (inverse) discrete Fourier transform of a real [..., 1] or complex [..., 2]
    signal along ``axis`` (default -2; never the last axis); ``onesided`` keeps n//2+1 bins
    (inverse+onesided is the real inverse FFT)."""
    ax = -2 if axis is None else int(np.asarray(axis))
    ax = ax % x.ndim
    if ax == x.ndim - 1:
        raise ValueError("DFT: axis may not be the last (real/imaginary) axis")
    if dft_length is not None:
        n = int(np.asarray(dft_length))
    elif inverse and onesided:
        n = 2 * (x.shape[ax] - 1)
    else:
        n = x.shape[ax]
    c = _to_complex(x)
    if inverse:
        if onesided:
            return np.fft.irfft(c, n=n, axis=ax)[..., None].astype(x.dtype)
        return _from_complex(np.fft.ifft(c, n=n, axis=ax), x.dtype)
    res = np.fft.fft(c, n=n, axis=ax)
    if onesided:
        res = np.take(res, np.arange(n // 2 + 1), axis=ax)
    return _from_complex(res, x.dtype)


@kernel("STFT")
def stft(
    signal: np.ndarray,
    frame_step: np.ndarray,
    window: np.ndarray | None = None,
    frame_length: np.ndarray | None = None,
    *,
    onesided: int = 1,
) -> np.ndarray:
    """ONNX STFT-17: windowed DFT of frames of a [batch, length, 1|2] signal; output
    [batch, frames, bins, 2]."""
    step = int(np.asarray(frame_step))
    if frame_length is not None:
        flen = int(np.asarray(frame_length))
    elif window is not None:
        flen = window.shape[0]
    else:
        flen = signal.shape[-2]
    win = np.ones(flen) if window is None else window.astype(np.float64)
    c = _to_complex(signal)  # (B, L)
    n_frames = 1 + (c.shape[1] - flen) // step
    idx = np.arange(n_frames)[:, None] * step + np.arange(flen)[None, :]
    frames = c[:, idx] * win  # (B, F, flen)
    spec = np.fft.fft(frames, n=flen, axis=-1)
    if onesided:
        spec = spec[..., : flen // 2 + 1]
    return _from_complex(spec, signal.dtype)


def _window(
    size: np.ndarray, periodic: int, output_datatype: int
) -> tuple[np.ndarray, float, np.dtype]:
    n = int(np.asarray(size))
    dtype = np.dtype(tensor_dtype_to_np_dtype(output_datatype))
    denom = n if periodic else n - 1
    return np.arange(n, dtype=np.float64), float(denom), dtype


@kernel("HannWindow")
def hann_window(size: np.ndarray, *, output_datatype: int = 1, periodic: int = 1) -> np.ndarray:
    """ONNX HannWindow-17: sin^2(pi n / N), N = size (periodic) or size - 1."""
    ni, denom, dt = _window(size, periodic, output_datatype)
    return (np.sin(ni * np.pi / denom) ** 2).astype(dt)


@kernel("HammingWindow")
def hamming_window(size: np.ndarray, *, output_datatype: int = 1, periodic: int = 1) -> np.ndarray:
    """ONNX HammingWindow-17: 25/46 - 21/46 cos(2 pi n / N)."""
    ni, denom, dt = _window(size, periodic, output_datatype)
    return (25 / 46 - 21 / 46 * np.cos(2 * np.pi * ni / denom)).astype(dt)


@kernel("BlackmanWindow")
def blackman_window(size: np.ndarray, *, output_datatype: int = 1, periodic: int = 1) -> np.ndarray:
    """ONNX BlackmanWindow-17: 0.42 - 0.5 cos(2 pi n / N) + 0.08 cos(4 pi n / N)."""
    ni, denom, dt = _window(size, periodic, output_datatype)
    a = 2 * np.pi * ni / denom
    return (0.42 - 0.5 * np.cos(a) + 0.08 * np.cos(2 * a)).astype(dt)


@kernel("MelWeightMatrix")
def mel_weight_matrix(
    num_mel_bins: np.ndarray,
    dft_length: np.ndarray,
    sample_rate: np.ndarray,
    lower_edge_hertz: np.ndarray,
    upper_edge_hertz: np.ndarray,
    *,
    output_datatype: int = 1,
) -> np.ndarray:
    """ONNX MelWeightMatrix-17: [dft_length//2+1, num_mel_bins] triangular mel filter bank."""
    mels = int(np.asarray(num_mel_bins))
    n_fft = int(np.asarray(dft_length))
    rate = int(np.asarray(sample_rate))
    lo, hi = float(np.asarray(lower_edge_hertz)), float(np.asarray(upper_edge_hertz))
    lo_mel = 2595 * np.log1p(lo / 700) / np.log(10)
    hi_mel = 2595 * np.log1p(hi / 700) / np.log(10)
    step = (hi_mel - lo_mel) / (mels + 2)
    hz = 700 * np.expm1((np.arange(mels + 2) * step + lo_mel) / 2595 * np.log(10))
    edges = (((n_fft + 1) * hz) // rate).astype(np.int64)
    out = np.zeros((n_fft // 2 + 1, mels), dtype=np.float64)
    j = np.arange(n_fft // 2 + 1)
    for i in range(mels):
        left, center, right = edges[i], edges[i + 1], edges[i + 2]
        if center == left:
            out[center, i] = 1
        else:
            rise = (j >= left) & (j <= center)
            out[rise, i] = (j[rise] - left) / (center - left)
        if right > center:
            fall = (j >= center) & (j < right)
            out[fall, i] = (right - j[fall]) / (right - center)
    return out.astype(tensor_dtype_to_np_dtype(output_datatype))
