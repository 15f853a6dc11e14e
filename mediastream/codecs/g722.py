"""G.722 wideband ADPCM at 64 kbit/s (decoder also 56 and 48), bit-exact with ITU-T G.191.

How the module is built, and why:

* The codec is written once, as plain Python functions on integers and int64 numpy arrays that
  follow the G.191 reference code (``src/g722/funcg722.c`` of the ITU-T STL) block by block:
  ``quantl``, ``invqal``, ``invqbl``, ``logscl``, ``scalel``, ``upzero``, ``uppol2``, ``uppol1``,
  ``filtez``, ``filtep``, the QMF, and the high-band twins. The STL's saturating 16-bit
  operators ``add``, ``sub`` and ``mult`` become :func:`_add`, :func:`_sub` and :func:`_mult`.
  Every function is compiled with numba ``@njit(cache=True)``; with ``NUMBA_DISABLE_JIT=1`` the
  same source runs as plain Python (about a thousand times slower), so the tests can check the
  source itself against the ITU vectors, not only its compiled form.
* State lives in int64 arrays. Field ``F`` of a band is ``st[i + F * w]``: a single codec
  uses one array of :data:`NSTATE` fields and ``w = 1``; a :class:`G722DecoderBank`
  interleaves ``LANES`` streams per row of its state (``w = LANES``), so the same step
  functions, called in an inner loop over the lanes, touch consecutive memory and LLVM
  vectorizes them across streams. The ADPCM recursion is sequential in time: only independent
  streams can run side by side (and, with ``parallel=True``, rows of ``LANES`` streams run on
  several cores).
* The QMF filters are FIR filters, so they run as passes outside the recursion: the analysis
  filter before the encoder's ADPCM loop, the synthesis filter after the decoder's. Between
  calls only the last 11 inputs of each polyphase branch are kept, so decoding frame by frame
  gives exactly what decoding the whole buffer gives.
* Python-level wrappers do as little as possible per call (one output array, one
  ``np.frombuffer``, one call into compiled code): at 20 ms per frame the call overhead is a
  real share of the cost.

Known difference from other implementations: G.191's QMF analysis clips its outputs with
``limit()`` to -16384..16383; libg722 (the ``G722`` package) and FFmpeg do not. Speech never
gets there, but clipped full-scale input (square waves, hard-clipped sines) does, and from then
on their encoders may emit other codes than G.191 and this module. Their decoders agree with
this one on every input tried, including random octets.

Importing this module imports numba (``import mediastream`` and ``mediastream.codecs`` do not).
Kernels compile on first use and are cached on disk; :mod:`._numba_cache` picks a writable
cache directory when the package directory is read-only.
"""

from __future__ import annotations

from mediastream.codecs import _numba_cache  # noqa: F401  (sets NUMBA_CACHE_DIR before numba)

# isort: split

import numpy as np
from numba import njit, prange

from mediastream.errors import CodecError

__all__ = [
    "LANES",
    "SAMPLE_RATE",
    "G722Decoder",
    "G722DecoderBank",
    "G722Encoder",
]

SAMPLE_RATE = 16000  # audio rate; the RTP clock rate of G.722 is 8000 (RFC 3551)
LANES = 8  # streams interleaved in a bank's state: one AVX-512 vector of int64 (16, 32: no faster)

# ---------------------------------------------------------------------------------------------
# Tables, copied from G.191 funcg722.c
# ---------------------------------------------------------------------------------------------
_I64 = np.int64


def _table(values: list[int] | list[list[int]]) -> np.ndarray:
    array = np.array(values, dtype=_I64)
    array.setflags(write=False)
    return array


# quantl: 6-bit code from sign (row 0 negative, row 1 positive) and magnitude level 0..30
_MISIL = _table(
    [
        [0x00, 0x3F, 0x3E, 0x1F, 0x1E, 0x1D, 0x1C, 0x1B, 0x1A, 0x19, 0x18, 0x17, 0x16, 0x15,
         0x14, 0x13, 0x12, 0x11, 0x10, 0x0F, 0x0E, 0x0D, 0x0C, 0x0B, 0x0A, 0x09, 0x08, 0x07,
         0x06, 0x05, 0x04, 0x00],
        [0x00, 0x3D, 0x3C, 0x3B, 0x3A, 0x39, 0x38, 0x37, 0x36, 0x35, 0x34, 0x33, 0x32, 0x31,
         0x30, 0x2F, 0x2E, 0x2D, 0x2C, 0x2B, 0x2A, 0x29, 0x28, 0x27, 0x26, 0x25, 0x24, 0x23,
         0x22, 0x21, 0x20, 0x00],
    ]
)  # fmt: skip
# quantl decision levels; stored pre-shifted (shl(q6[mil], 3) never saturates: 3200 * 8 < 2**15)
_Q6 = [0, 35, 72, 110, 150, 190, 233, 276, 323, 370, 422, 473, 530, 587, 650, 714, 786, 858,
       940, 1023, 1121, 1219, 1339, 1458, 1612, 1765, 1980, 2195, 2557, 2919, 3200]  # fmt: skip
_Q6X8 = _table([8 * q for q in _Q6])
# quanth
_MISIH = _table([[0, 1, 0], [0, 3, 2]])
_Q2X8 = 564 * 8

# inverse quantizers: magnitude index and sign (-1 negative) per code, output levels
_RIL4 = [0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0]
_RISI4 = [0, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0]
_OQ4 = [0, 150, 323, 530, 786, 1121, 1612, 2557]
_RIL5 = [1, 1, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2,
         15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 1]  # fmt: skip
_RISI5 = [-1] * 16 + [0] * 15 + [-1]
_OQ5 = [0, 35, 110, 190, 276, 370, 473, 587, 714, 858, 1023, 1219, 1458, 1765, 2195, 2919]
_RIL6 = [1, 1, 1, 1, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13,
         12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18,
         17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 2, 1]  # fmt: skip
_RISI6 = [-1] * 32 + [0] * 30 + [-1, -1]
_OQ6 = [0, 17, 54, 91, 130, 170, 211, 254, 300, 347, 396, 447, 501, 558, 618, 682, 750, 822,
        899, 982, 1072, 1170, 1279, 1399, 1535, 1689, 1873, 2088, 2376, 2738, 3101]  # fmt: skip
_IH2 = [2, 1, 2, 1]  # high band: magnitude index per 2-bit code
_SIH = [-1, -1, 0, 0]  # high band: sign per code
_OQ2 = [0, 202, 926]

# logscl / logsch: log scale factor increments
_WL = [-60, -30, 58, 172, 334, 538, 1198, 3042]
_WH = [0, -214, 798]

# scalel / scaleh: antilog table
_ILA = _table(
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
     2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 6, 6,
     6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 8, 8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11,
     12, 12, 12, 13, 13, 13, 13, 14, 14, 15, 15, 15, 16, 16, 16, 17, 17, 18, 18, 18, 19, 19,
     20, 20, 21, 21, 22, 22, 23, 23, 24, 24, 25, 25, 26, 27, 27, 28, 28, 29, 30, 31, 31, 32,
     33, 33, 34, 35, 36, 37, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52,
     54, 55, 56, 57, 58, 60, 61, 63, 64, 65, 67, 68, 70, 71, 73, 75, 76, 78, 80, 82, 83, 85,
     87, 89, 91, 93, 95, 97, 99, 102, 104, 106, 109, 111, 113, 116, 118, 121, 124, 127, 129,
     132, 135, 138, 141, 144, 147, 151, 154, 157, 161, 165, 168, 172, 176, 180, 184, 188, 192,
     196, 200, 205, 209, 214, 219, 223, 228, 233, 238, 244, 249, 255, 260, 266, 272, 278, 284,
     290, 296, 303, 310, 316, 323, 331, 338, 345, 353, 361, 369, 377, 385, 393, 402, 411, 420,
     429, 439, 448, 458, 468, 478, 489, 500, 511, 522, 533, 545, 557, 569, 582, 594, 607, 621,
     634, 648, 663, 677, 692, 707, 723, 739, 755, 771, 788, 806, 823, 841, 860, 879, 898, 918,
     938, 958, 979, 1001, 1023, 1045, 1068, 1092, 1115, 1140, 1165, 1190, 1216, 1243, 1270,
     1298, 1327, 1356, 1386, 1416, 1447, 1479, 1511, 1544, 1578, 1613, 1648, 1684, 1721, 1759,
     1797, 1837, 1877, 1918, 1960, 2003, 2047, 2092, 2138, 2185, 2232, 2281, 2331, 2382, 2434,
     2488, 2542, 2598, 2655, 2713, 2773, 2833, 2895, 2959, 3024, 3090, 3157, 3227, 3297, 3370,
     3443, 3519, 3596, 3675, 3755, 3837, 3921, 4007, 4095]
)  # fmt: skip

# QMF coefficients (coef_qmf, already doubled as in G.191), split into the two polyphase
# branches: even taps weight the difference branch, odd taps the sum branch
_QMF = [3, -11, -11, 53, 12, -156, 32, 362, -210, -805, 951, 3876,
        3876, 951, -805, -210, 362, 32, -156, 12, 53, -11, -11, 3]  # fmt: skip
_QMF_EVEN = _table([2 * c for c in _QMF[0::2]])
_QMF_ODD = _table([2 * c for c in _QMF[1::2]])


def _signed(magnitude: int, sign: int) -> int:
    """``wd2`` of the inverse quantizers: ``shl(oq, 3)``, negated when the sign entry is -1."""
    return -8 * magnitude if sign else 8 * magnitude


def _build_code_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fold the G.191 two-step lookups (code -> level index and sign -> level) into one table
    per code, so each step does one lookup. None of the folded steps saturates (the largest
    level, 3101 * 8, fits in 16 bits), so the tables give exactly what G.191 computes."""
    invqbl = np.zeros((4, 64), dtype=_I64)  # [mode, il]; mode 0 is mode 1, as in G.191
    for il in range(64):
        full = _signed(_OQ6[_RIL6[il]], _RISI6[il])
        invqbl[0, il] = invqbl[1, il] = full
        invqbl[2, il] = _signed(_OQ5[_RIL5[il >> 1]], _RISI5[il >> 1])
        invqbl[3, il] = _signed(_OQ4[_RIL4[il >> 2]], _RISI4[il >> 2])
    invqal = [_signed(_OQ4[_RIL4[il >> 2]], _RISI4[il >> 2]) for il in range(64)]
    wl = [_WL[_RIL4[il >> 2]] for il in range(64)]
    invqah = [_signed(_OQ2[_IH2[ih]], _SIH[ih]) for ih in range(4)]
    wh = [_WH[_IH2[ih]] for ih in range(4)]
    invqbl.setflags(write=False)
    return invqbl, _table(invqal), _table(wl), _table(invqah), _table(wh)


_INVQBL, _INVQAL, _WL_BY_IL, _INVQAH, _WH_BY_IH = _build_code_tables()

# ---------------------------------------------------------------------------------------------
# State layout
# ---------------------------------------------------------------------------------------------
# fields of one band (lower and upper band alike)
_DET = 0  # quantizer scale factor (detl / deth)
_S = 1  # signal estimate (sl / sh)
_SZ = 2  # zero-section part of the estimate (szl / szh)
_NB = 3  # log scale factor (nbl / nbh)
_A1 = 4  # pole predictor coefficients a1, a2
_A2 = 5
_B1 = 6  # zero predictor coefficients b1..b6: fields 6..11
_D1 = 12  # past quantized differences d1..d6: fields 12..17
_P1 = 18  # past partial reconstructions p1, p2
_P2 = 19
_R1 = 20  # past reconstructed signal r1 (no r2: filtep reads only r0 and r1)
_BAND = 21

LOW = 0  # first field of the lower band
HIGH = _BAND  # first field of the upper band
QMF = 2 * _BAND  # QMF history: 22 input samples (encoder) or 11 + 11 branch values (decoder)
_QMF_HISTORY = 22
NSTATE = QMF + _QMF_HISTORY


def reset_state(state: np.ndarray) -> None:
    """G.191 reset (``g722_reset_encoder`` / ``g722_reset_decoder``) of a single-codec state."""
    state[:] = 0
    state[LOW + _DET] = 32
    state[HIGH + _DET] = 8


# ---------------------------------------------------------------------------------------------
# G.191 basic operators and blocks (scalars)
# ---------------------------------------------------------------------------------------------
# All of these are inlined into the kernels by LLVM (``forceinline``): its cost model alone
# would leave the larger ones as calls, and a call left in the loop over a bank's lanes stops
# LLVM vectorizing that loop. (numba's own ``inline="always"`` also works, but makes the first
# compilation minutes long.)
_inline = njit(cache=True, forceinline=True)


@_inline
def _clamp(x: int, low: int, high: int) -> int:
    return low if x < low else (high if x > high else x)


@_inline
def _sat16(x: int) -> int:
    """Saturate to 16 bits, as the STL operators do on overflow."""
    return _clamp(x, -32768, 32767)


@_inline
def _add(a: int, b: int) -> int:
    return _sat16(a + b)


@_inline
def _sub(a: int, b: int) -> int:
    return _sat16(a - b)


@_inline
def _mult(a: int, b: int) -> int:
    """STL ``mult``: the Q15 product, saturated (only -32768 * -32768 needs it)."""
    return _sat16((a * b) >> 15)


@_inline
def _limit(x: int) -> int:
    """G.191 ``limit``: clip a reconstructed sub-band sample to 15 bits."""
    return _clamp(x, -16384, 16383)


@_inline
def _quantl(el: int, detl: int) -> int:
    """Block 1L: 6-bit quantizer of the lower-band difference ``el``."""
    wd = el if el >= 0 else -el - 1  # sub(MAX_16, s_and(el, MAX_16)): ones' complement magnitude
    # G.191 steps mil up while mult(q6[mil] << 3, detl) <= wd, stopping at 30. The levels grow
    # with mil (detl > 0), so that stopping point is the number of levels 0..29 at or below
    # wd: counted without a data-dependent loop exit, which compiles to vector code.
    mil = 0
    for m in range(30):
        mil += 1 if _mult(_Q6X8[m], detl) <= wd else 0
    return _MISIL[1 if el >= 0 else 0, mil]


@_inline
def _quanth(eh: int, deth: int) -> int:
    """Block 1H: 2-bit quantizer of the upper-band difference ``eh``."""
    wd = eh if eh >= 0 else -eh - 1
    mih = 2 if wd >= _mult(_Q2X8, deth) else 1
    return _MISIH[1 if eh >= 0 else 0, mih]


@_inline
def _logscl(il: int, nbl: int) -> int:
    """Block 3L: update of the lower-band log scale factor."""
    return _clamp(_add(_mult(nbl, 32512), _WL_BY_IL[il]), 0, 18432)


@_inline
def _logsch(ih: int, nbh: int) -> int:
    """Block 3H: update of the upper-band log scale factor."""
    return _clamp(_add(_mult(nbh, 32512), _WH_BY_IH[ih]), 0, 22528)


@_inline
def _scalel(nbpl: int) -> int:
    """Block 3L: lower-band scale factor from its logarithm (nbpl <= 18432: no saturation)."""
    return (_ILA[((nbpl >> 6) & 511) + 64] + 1) << 2


@_inline
def _scaleh(nbph: int) -> int:
    """Block 3H: upper-band scale factor from its logarithm."""
    return (_ILA[(nbph >> 6) & 511] + 1) << 2


@_inline
def _upzero_filtez(
    st: np.ndarray, b_at: int, d_at: int, d_new: int, step: int, negative: bool, sz: int
) -> int:
    """One tap of ``upzero`` then ``filtez``: update b_k by the sign of d_k against that of
    d_0 (``negative``), shift ``d_new`` (old d_(k-1)) into d_k, add the tap to ``sz``."""
    b = _add(step if (st[d_at] < 0) == negative else -step, _mult(st[b_at], 32640))
    st[b_at] = b
    st[d_at] = d_new
    return _add(sz, _mult(_add(d_new, d_new), b))


@_inline
def _adapt(st: np.ndarray, i: int, w: int, dq: int, nbp: int, det: int) -> int:
    """Blocks 3 and 4 of one band, after its inverse quantizer; returns the reconstruction.

    ``dq`` is the quantized difference (``dlt[0]`` / ``dh[0]``), ``nbp`` and ``det`` the new
    log scale factor and scale factor. Field ``F`` of the band is ``st[i + F * w]``. In G.191
    order: parrec, recons, upzero, uppol2, uppol1, filtez, filtep, predic. ``upzero`` and
    ``filtez`` go tap by tap together: both run over taps 6 down to 1, and filtez reads each
    tap only after upzero has updated it, so the saturating sums happen in the same order.
    """
    s = st[i + _S * w]
    a1 = st[i + _A1 * w]
    a2 = st[i + _A2 * w]
    p1 = st[i + _P1 * w]
    p2 = st[i + _P2 * w]
    r1 = st[i + _R1 * w]
    p0 = _add(dq, st[i + _SZ * w])  # parrec
    r0 = _add(s, dq)  # recons

    # upzero (sign-sign update of b1..b6, shift of d1..d6) fused with filtez, taps 6 down to 1;
    # written out, since a loop here would stop the vectorization across a bank's lanes
    step = 0 if dq == 0 else 128
    negative = dq < 0
    b = i + _B1 * w  # b_k is st[b + (k - 1) * w], d_k is st[d + (k - 1) * w]
    d = i + _D1 * w
    sz = _upzero_filtez(st, b + 5 * w, d + 5 * w, st[d + 4 * w], step, negative, 0)
    sz = _upzero_filtez(st, b + 4 * w, d + 4 * w, st[d + 3 * w], step, negative, sz)
    sz = _upzero_filtez(st, b + 3 * w, d + 3 * w, st[d + 2 * w], step, negative, sz)
    sz = _upzero_filtez(st, b + 2 * w, d + 2 * w, st[d + w], step, negative, sz)
    sz = _upzero_filtez(st, b + w, d + w, st[d], step, negative, sz)
    sz = _upzero_filtez(st, b, d, dq, step, negative, sz)

    # uppol2, with the old a1 and a2
    same01 = (p0 < 0) == (p1 < 0)
    wd1 = _sat16(a1 * 4)  # shl(al[1], 2)
    wd2 = (_sat16(-wd1) if same01 else wd1) >> 7
    wd3 = 128 if (p0 < 0) == (p2 < 0) else -128
    new_a2 = _clamp(_add(_add(wd2, wd3), _mult(a2, 32512)), -12288, 12288)
    # uppol1, with the old a1 and the new a2
    new_a1 = _add(192 if same01 else -192, _mult(a1, 32640))
    bound = 15360 - new_a2  # in 3072..27648, so the comparisons cannot saturate
    new_a1 = _clamp(new_a1, -bound, bound)

    # filtep, predic
    sp = _add(_mult(new_a1, _add(r0, r0)), _mult(new_a2, _add(r1, r1)))
    st[i + _S * w] = _add(sp, sz)
    st[i + _SZ * w] = sz
    st[i + _A1 * w] = new_a1
    st[i + _A2 * w] = new_a2
    st[i + _P1 * w] = p0
    st[i + _P2 * w] = p1
    st[i + _R1 * w] = r0
    st[i + _NB * w] = nbp
    st[i + _DET * w] = det
    return r0


@_inline
def _lsbdec(st: np.ndarray, i: int, w: int, il: int, mode: int) -> int:
    """G.191 ``lsbdec``: one lower-band sample from its 6-bit code (of which ``mode`` uses
    6, 5 or 4 bits for the output; the adaptation always uses the 4 most significant)."""
    detl = st[i + _DET * w]
    yl = _limit(_add(st[i + _S * w], _mult(detl, _INVQBL[mode, il])))  # invqbl, recons, limit
    nbpl = _logscl(il, st[i + _NB * w])
    _adapt(st, i, w, _mult(detl, _INVQAL[il]), nbpl, _scalel(nbpl))  # invqal, ...
    return yl


@_inline
def _hsbdec(st: np.ndarray, i: int, w: int, ih: int) -> int:
    """G.191 ``hsbdec``: one upper-band sample from its 2-bit code."""
    nbph = _logsch(ih, st[i + _NB * w])
    rh = _adapt(st, i, w, _mult(_INVQAH[ih], st[i + _DET * w]), nbph, _scaleh(nbph))
    return _limit(rh)


@_inline
def _lsbcod(st: np.ndarray, i: int, w: int, xl: int) -> int:
    """G.191 ``lsbcod``: the 6-bit code of one lower-band sample."""
    detl = st[i + _DET * w]
    il = _quantl(_sub(xl, st[i + _S * w]), detl)
    nbpl = _logscl(il, st[i + _NB * w])
    _adapt(st, i, w, _mult(detl, _INVQAL[il]), nbpl, _scalel(nbpl))
    return il


@_inline
def _hsbcod(st: np.ndarray, i: int, w: int, xh: int) -> int:
    """G.191 ``hsbcod``: the 2-bit code of one upper-band sample."""
    deth = st[i + _DET * w]
    ih = _quanth(_sub(xh, st[i + _S * w]), deth)
    nbph = _logsch(ih, st[i + _NB * w])
    _adapt(st, i, w, _mult(_INVQAH[ih], deth), nbph, _scaleh(nbph))
    return ih


# ---------------------------------------------------------------------------------------------
# QMF
# ---------------------------------------------------------------------------------------------
# Bounds that make the 32-bit saturations of qmf_tx / qmf_rx reachable only where handled:
# the sum of |even taps| (and of |odd taps|) is 12964, so with 16-bit inputs each accumulator
# stays below 12964 * 32768 < 2**29 and 2 * (a + b) below 2**31. Only qmf_rx's final L_shl by
# 4 can overflow; L_shl then extract_h equals (acc >> 12) saturated to 16 bits.


@_inline
def _qmf_rx(dif: np.ndarray, sm: np.ndarray, lane: int, out: np.ndarray) -> None:
    """G.191 ``qmf_rx`` for one stream: ``dif[11 + t, lane]`` and ``sm[11 + t, lane]`` hold
    rl - rh and rl + rh of step ``t``, after the 11 previous values of each branch."""
    for t in range(dif.shape[0] - 11):
        acc_a = 0
        acc_b = 0
        for k in range(12):
            acc_a += _QMF_EVEN[k] * dif[11 + t - k, lane]
            acc_b += _QMF_ODD[k] * sm[11 + t - k, lane]
        out[2 * t] = _sat16(acc_a >> 12)
        out[2 * t + 1] = _sat16(acc_b >> 12)


@_inline
def _qmf_tx(x: np.ndarray, t: int) -> tuple[int, int]:
    """G.191 ``qmf_tx`` for the sample pair ``x[22 + 2t]``, ``x[23 + 2t]`` (22 samples of
    history in front): the lower- and upper-band samples ``xl``, ``xh``."""
    acc_a = 0
    acc_b = 0
    for k in range(12):
        acc_a += _QMF_EVEN[k] * x[23 + 2 * t - 2 * k]  # xin0, the second sample of each pair
        acc_b += _QMF_ODD[k] * x[22 + 2 * t - 2 * k]
    return _limit((2 * (acc_a + acc_b)) >> 16), _limit((2 * (acc_a - acc_b)) >> 16)


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------
@njit(cache=True)
def _decode(st: np.ndarray, codes: np.ndarray, mode: int, out: np.ndarray) -> None:
    """Decode ``codes`` (uint8) into ``out`` (int16, twice as long) from single-codec state."""
    n = codes.shape[0]
    dif = np.empty((n + 11, 1), dtype=np.int64)
    sm = np.empty((n + 11, 1), dtype=np.int64)
    for k in range(11):
        dif[k, 0] = st[QMF + k]
        sm[k, 0] = st[QMF + 11 + k]
    for t in range(n):
        code = int(codes[t])
        rl = _lsbdec(st, LOW, 1, code & 0x3F, mode)
        rh = _hsbdec(st, HIGH, 1, code >> 6)
        dif[11 + t, 0] = _sub(rl, rh)
        sm[11 + t, 0] = _add(rl, rh)
    _qmf_rx(dif, sm, 0, out)
    for k in range(11):
        st[QMF + k] = dif[n + k, 0]
        st[QMF + 11 + k] = sm[n + k, 0]


@njit(cache=True)
def _encode(st: np.ndarray, pcm: np.ndarray, out: np.ndarray) -> None:
    """Encode ``pcm`` (int16, even length) into ``out`` (uint8, half as long)."""
    n = out.shape[0]
    x = np.empty(2 * n + _QMF_HISTORY, dtype=np.int64)
    for k in range(_QMF_HISTORY):
        x[k] = st[QMF + k]
    for k in range(2 * n):
        x[_QMF_HISTORY + k] = pcm[k]
    for t in range(n):
        xl, xh = _qmf_tx(x, t)
        il = _lsbcod(st, LOW, 1, xl)
        ih = _hsbcod(st, HIGH, 1, xh)
        out[t] = (ih << 6) | il
    for k in range(_QMF_HISTORY):
        st[QMF + k] = x[2 * n + k]


@njit(cache=True)
def _decode_block(st: np.ndarray, codes: np.ndarray, mode: int, out: np.ndarray, b: int) -> None:
    """Decode streams ``b * LANES`` .. ``b * LANES + LANES - 1`` of a bank, time step by time
    step, the inner loop running over the lanes. ``sb``, block ``b``'s state, holds field ``F``
    of lane ``lane`` at ``F * LANES + lane``: consecutive lanes are adjacent, and every index
    is a constant plus the lane, which LLVM's loop vectorizer needs to see. Lanes past the last
    stream decode a copy of it and are not written out."""
    n_streams, n = codes.shape
    j0 = b * LANES
    sb = st[b]
    dif = np.empty((n + 11, LANES), dtype=np.int64)
    sm = np.empty((n + 11, LANES), dtype=np.int64)
    for k in range(11):
        for lane in range(LANES):
            dif[k, lane] = sb[(QMF + k) * LANES + lane]
            sm[k, lane] = sb[(QMF + 11 + k) * LANES + lane]
    # this block's codes, time-major so that each step reads its lanes' codes side by side
    block_codes = np.empty((n, LANES), dtype=np.uint8)
    for lane in range(LANES):
        j = min(j0 + lane, n_streams - 1)
        for t in range(n):
            block_codes[t, lane] = codes[j, t]
    lanes = sb.shape[0] // NSTATE  # == LANES, but not a constant: LLVM would unroll, not vectorize
    for t in range(n):
        for lane in range(lanes):
            code = int(block_codes[t, lane])
            rl = _lsbdec(sb, LOW * LANES + lane, LANES, code & 0x3F, mode)
            rh = _hsbdec(sb, HIGH * LANES + lane, LANES, code >> 6)
            dif[11 + t, lane] = _sub(rl, rh)
            sm[11 + t, lane] = _add(rl, rh)
    for lane in range(min(LANES, n_streams - j0)):
        _qmf_rx(dif, sm, lane, out[j0 + lane])
    for k in range(11):
        for lane in range(LANES):
            sb[(QMF + k) * LANES + lane] = dif[n + k, lane]
            sb[(QMF + 11 + k) * LANES + lane] = sm[n + k, lane]


@njit(cache=True)
def _decode_bank_serial(st: np.ndarray, codes: np.ndarray, mode: int, out: np.ndarray) -> None:
    for b in range((codes.shape[0] + LANES - 1) // LANES):
        _decode_block(st, codes, mode, out, b)


@njit(cache=True, parallel=True)
def _decode_bank_parallel(st: np.ndarray, codes: np.ndarray, mode: int, out: np.ndarray) -> None:
    for b in prange((codes.shape[0] + LANES - 1) // LANES):
        _decode_block(st, codes, mode, out, b)


# ---------------------------------------------------------------------------------------------
# Public classes
# ---------------------------------------------------------------------------------------------
def _check_mode(mode: int) -> int:
    if mode not in (1, 2, 3):
        raise CodecError(f"G.722 mode must be 1 (64 kbit/s), 2 (56) or 3 (48), not {mode!r}")
    return int(mode)


_frombuffer = np.frombuffer
_empty = np.empty
_U8 = np.uint8
_I16 = np.int16


class G722Decoder:
    """Stateful G.722 decoder for one stream: 2 samples at 16 kHz per octet.

    ``sample_rate`` is accepted for the registry's sake and ignored: G.722's RTP clock says
    8000 but the audio is 16 kHz. ``mode`` 2 and 3 decode the 56 and 48 kbit/s modes (the lower
    band's 1 or 2 least significant bits carry auxiliary data and are ignored).
    """

    encoding = "G722"
    sample_rate = SAMPLE_RATE
    stateless = False  # ADPCM predictors: a frame decodes right only after the one before it
    __slots__ = ("_state", "mode")

    def __init__(self, sample_rate: int | None = None, mode: int = 1) -> None:
        del sample_rate
        self.mode = _check_mode(mode)
        self._state = np.empty(NSTATE, dtype=np.int64)
        reset_state(self._state)

    def reset(self) -> None:
        """Back to the G.191 reset state."""
        reset_state(self._state)

    def decode(self, payload: bytes) -> np.ndarray:
        out = _empty(2 * len(payload), _I16)
        _decode(self._state, _frombuffer(payload, _U8), self.mode, out)
        return out

    def decode_many(self, payloads: list[bytes]) -> list[np.ndarray]:
        """Decode consecutive payloads of this stream in one call, then split."""
        joined = self.decode(b"".join(payloads))
        bounds = np.cumsum([2 * len(p) for p in payloads])[:-1]
        return np.split(joined, bounds)


class G722Encoder:
    """Stateful G.722 encoder (64 kbit/s) for one stream: 2 samples at 16 kHz per octet."""

    encoding = "G722"
    sample_rate = SAMPLE_RATE
    __slots__ = ("_state",)

    def __init__(self, sample_rate: int | None = None) -> None:
        del sample_rate
        self._state = np.empty(NSTATE, dtype=np.int64)
        reset_state(self._state)

    def reset(self) -> None:
        reset_state(self._state)

    def encode(self, pcm: np.ndarray) -> bytes:
        samples = np.ascontiguousarray(pcm, dtype=_I16)
        if samples.ndim != 1 or samples.shape[0] & 1:
            raise CodecError(
                f"G.722 encodes sample pairs: need a 1-D array of even length, got {samples.shape}"
            )
        out = _empty(samples.shape[0] >> 1, _U8)
        _encode(self._state, samples, out)
        return out.tobytes()


# Bank default, measured on the 2-core development VM at 256 streams x 160 octets: parallel
# decoding is 1.9x faster only while the second core is idle (381 vs 734 us a call); with one
# other busy process it is no faster (771 vs 724 us), with two it stalls (worst call 4.7 ms
# against 1.7 ms). A media server rarely has an idle core, so banks run serially unless asked.
PARALLEL_DEFAULT = False


class G722DecoderBank:
    """Decoders for ``n_streams`` streams whose payloads arrive together, decoded in one call.

    The state is struct-of-arrays in blocks of :data:`LANES` streams (shape ``(blocks,
    NSTATE * LANES)``, field ``F`` of stream ``j`` at ``[j // LANES, F * LANES + j % LANES]``):
    for every state field the streams of a block are adjacent, so one compiled time step runs
    over a whole block as vector instructions. With ``parallel`` true, blocks are spread over
    numba's threads (see :data:`PARALLEL_DEFAULT`). Stream ``j`` decodes exactly what a
    :class:`G722Decoder` fed the same payloads would.
    """

    encoding = "G722"
    sample_rate = SAMPLE_RATE
    stateless = False

    def __init__(self, n_streams: int, mode: int = 1, parallel: bool | None = None) -> None:
        if n_streams < 1:
            raise ValueError(f"a bank needs at least one stream, not {n_streams}")
        self.n_streams = int(n_streams)
        self.mode = _check_mode(mode)
        self.parallel = PARALLEL_DEFAULT if parallel is None else bool(parallel)
        self._n_blocks = (self.n_streams + LANES - 1) // LANES
        self._state = np.empty((self._n_blocks, NSTATE * LANES), dtype=np.int64)
        self.reset()

    def _fields(self) -> np.ndarray:
        """The state as [block, field, lane] (a view)."""
        return self._state.reshape(self._n_blocks, NSTATE, LANES)

    def reset(self, stream: int | None = None) -> None:
        """Reset one stream (a call ended, another begins in its slot), or all of them."""
        fields = self._fields()
        if stream is None:
            fields[:] = 0
            fields[:, LOW + _DET, :] = 32
            fields[:, HIGH + _DET, :] = 8
            return
        if not 0 <= stream < self.n_streams:
            raise IndexError(f"stream {stream} out of range 0..{self.n_streams - 1}")
        block, lane = divmod(stream, LANES)
        fields[block, :, lane] = 0
        fields[block, LOW + _DET, lane] = 32
        fields[block, HIGH + _DET, lane] = 8

    def state_of(self, stream: int) -> np.ndarray:
        """A copy of one stream's state in the single-codec layout (for inspection, tests)."""
        block, lane = divmod(stream, LANES)
        return self._fields()[block, :, lane].copy()

    def decode_many(self, payloads: list[bytes]) -> np.ndarray:
        """Decode one payload per stream (all the same length) into int16 of shape
        ``(n_streams, 2 * len(payload))``."""
        if len(payloads) != self.n_streams:
            raise CodecError(f"expected {self.n_streams} payloads, got {len(payloads)}")
        size = len(payloads[0])
        if any(len(p) != size for p in payloads):
            raise CodecError("payloads of a G722DecoderBank call must all have the same length")
        codes = _frombuffer(b"".join(payloads), _U8).reshape(self.n_streams, size)
        out = _empty((self.n_streams, 2 * size), _I16)
        kernel = _decode_bank_parallel if self.parallel else _decode_bank_serial
        kernel(self._state, codes, self.mode, out)
        return out
