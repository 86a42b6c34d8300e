"""NIfTI input/output: validated loading, RAS reorientation, resampling and atomic saving.

Conventions
-----------
* Images are :class:`nibabel.Nifti1Image`; data is read as ``float32``.
* :func:`to_canonical` / :func:`from_canonical` only permute and flip axes, so the round trip
  is exact (data and affine).
* :func:`resample_to_spacing` keeps the orientation (also oblique) and the field of view
  (voxel edges aligned); :func:`resample_to_reference` puts an image on any other grid.
* :func:`save_nifti` writes to a temporary file in the destination folder and renames it, so
  a crash never leaves a half-written output, and refuses to overwrite protected (input)
  paths.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt
from scipy import ndimage

from rtfsyn.errors import InputImageError, OutputPathError, OutputWriteError, RtfsynError

__all__ = [
    "NIFTI_SUFFIXES",
    "OutputGuard",
    "active_guard",
    "atomic_write",
    "canonical_voxel_size",
    "from_canonical",
    "is_nifti_path",
    "load_nifti",
    "resample_to_reference",
    "resample_to_spacing",
    "save_nifti",
    "sidecar_paths",
    "spacing_of",
    "to_canonical",
    "validate_image",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_GZIP_MAGIC = b"\x1f\x8b"


def is_nifti_path(path: str | Path) -> bool:
    """True if the file name ends in ``.nii`` or ``.nii.gz``."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def spacing_of(img: nib.Nifti1Image) -> tuple[float, float, float]:
    """Voxel sizes (mm) of the first three axes, from the affine."""
    return tuple(float(x) for x in np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0)))


def canonical_voxel_size(
    img: nib.Nifti1Image | np.ndarray, digits: int = 4
) -> tuple[float, float, float]:
    """Voxel sizes (mm) in RAS order: those of :func:`to_canonical` of the image.

    The one place every voxel size handed to a model comes from (synthesis, dataset
    adapters, training subjects, evaluation). ``img`` is an image or its 4×4 affine; the
    data is not read. A slice-first 5×1×1 mm (S, R, A) image gives ``(1, 1, 5)``.
    Sizes are rounded to ``digits`` decimals so that equal grids give equal metadata.
    """
    affine = np.asarray(img.affine if hasattr(img, "affine") else img, dtype=float)
    sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    axes = ornt.io_orientation(affine)[:, 0]  # RAS axis each input axis becomes
    ras = [0.0, 0.0, 0.0]
    for i, j in enumerate(axes):
        ras[int(j) if np.isfinite(j) else i] = float(sizes[i])
    return tuple(round(v, digits) for v in ras)  # type: ignore[return-value]


# --------------------------------------------------------------------------- loading
def load_nifti(path: str | Path, *, check_finite: bool = True) -> nib.Nifti1Image:
    """Load and validate a 3-D NIfTI image (data as float32).

    A 4-D image with a singleton 4th axis is squeezed to 3-D; any other 4-D image is an error.
    A ``.nii.gz`` file that is not gzip-compressed (or a ``.nii`` that is) is read anyway.

    Raises:
        InputImageError: one-line message naming the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"{path}: file does not exist")
    if path.is_dir():
        raise InputImageError(f"{path}: is a folder, expected a .nii or .nii.gz file")
    if not is_nifti_path(path):
        raise InputImageError(f"{path}: not a NIfTI file name (expected .nii or .nii.gz)")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
    except OSError as exc:
        raise InputImageError(f"{path}: cannot read ({exc.strerror})") from None
    is_gz = magic == _GZIP_MAGIC
    named_gz = str(path).lower().endswith(".gz")
    if not is_gz and not _looks_like_nifti_header(path):
        raise InputImageError(
            f"{path}: not a NIfTI/gzip file (neither gzip-compressed nor a NIfTI header; is it "
            "another file type renamed?)"
        )
    try:
        with _quiet_nibabel():
            img, data = _read_nifti(path, is_gz, named_gz)
    except Exception as exc:  # nibabel raises many exception types for corrupt files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputImageError(
            f"{path}: not a readable NIfTI image ({msg}); check that the file is complete"
        ) from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputImageError(f"{path}: is not a NIfTI-1/2 image")
    _check_raw_pixdim(path, is_gz)
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    elif data.ndim == 5 and data.shape[3:] == (1, 1):
        data = data[..., 0, 0]
    with _quiet_nibabel():
        header = img.header.copy()
        header.set_data_shape(data.shape)
        header.set_data_dtype(np.float32)
        header.set_slope_inter(None, None)
        out = nib.Nifti1Image(data, img.affine, header=header)
        _copy_xforms(img, out)
    validate_image(out, path=path, check_finite=check_finite)
    return out


def _read_nifti(path: Path, is_gz: bool, named_gz: bool) -> tuple[Any, np.ndarray]:
    """Read header and data now (so truncated files fail here), also when misnamed."""
    if is_gz == named_gz:
        img = nib.load(str(path))
        return img, np.asanyarray(img.dataobj)
    raw = path.read_bytes()
    if is_gz:
        raw = gzip.decompress(raw)
    img = nib.Nifti1Image.from_bytes(raw)
    return img, np.asanyarray(img.dataobj)


@contextlib.contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """Keep nibabel's log lines and numpy warnings off the terminal: we report one line."""
    from nibabel.imageglobals import logger

    was = logger.disabled
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = was


def _looks_like_nifti_header(path: Path) -> bool:
    """True if an uncompressed file starts like a NIfTI-1/2 header (sizeof_hdr 348 or 540)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return True  # let the reader report it
    if len(head) < 4:
        return False
    return any(int.from_bytes(head, order) in (348, 540) for order in ("little", "big"))


def validate_image(
    img: nib.Nifti1Image, *, path: str | Path | None = None, check_finite: bool = True
) -> None:
    """Check that ``img`` is a usable 3-D volume; raise :class:`InputImageError` if not."""
    where = f"{path}: " if path is not None else ""
    shape = img.shape
    if len(shape) != 3:
        extra = (
            f"; it has {shape[3]} volumes along axis 4: extract one (e.g. fslroi) first"
            if len(shape) == 4 else ""
        )
        raise InputImageError(f"{where}expected a 3-D image, got shape {tuple(shape)}{extra}")
    if min(shape) < 2:
        raise InputImageError(f"{where}image shape {tuple(shape)} is degenerate (an axis < 2)")
    affine = img.affine
    if not np.all(np.isfinite(affine)):
        raise InputImageError(f"{where}affine contains NaN or Inf; fix the NIfTI header")
    sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if np.any(sizes < 1e-6) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        rows = "; ".join(" ".join(f"{v:g}" for v in row) for row in affine[:3])
        raise InputImageError(
            f"{where}the voxel-to-world affine is singular (rows: {rows}), so a voxel axis has "
            "no size; fix the sform/qform (or pixdim) in the header"
        )
    if check_finite:
        data = np.asanyarray(img.dataobj)
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise InputImageError(
                f"{where}{bad} voxels are NaN or Inf; replace them (e.g. with 0) before use"
            )


# --------------------------------------------------------------------------- orientation
def to_canonical(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Reorient to RAS+ (closest canonical) by axis permutation/flips only (exact)."""
    return nib.as_closest_canonical(img)


def from_canonical(
    data: np.ndarray | nib.Nifti1Image, reference: nib.Nifti1Image
) -> nib.Nifti1Image:
    """Put RAS-canonical ``data`` back into the orientation of ``reference`` (exact inverse).

    ``data`` must have the shape of ``to_canonical(reference)``. The result has the
    reference's affine and header (qform/sform codes kept).
    """
    arr = np.asanyarray(data.dataobj if isinstance(data, nib.Nifti1Image) else data)
    src = ornt.io_orientation(reference.affine)
    ras = ornt.axcodes2ornt(("R", "A", "S"))
    back = ornt.ornt_transform(ras, src)
    out = ornt.apply_orientation(arr, back)
    if out.shape[:3] != reference.shape[:3]:
        raise RtfsynError(
            f"canonical data shape {arr.shape} does not match reference shape {reference.shape}"
        )
    return like(out, reference)


# --------------------------------------------------------------------------- resampling
def resample_to_spacing(
    img: nib.Nifti1Image,
    spacing: float | Sequence[float],
    *,
    order: int = 1,
) -> nib.Nifti1Image:
    """Resample to voxel size ``spacing`` (mm) exactly, keeping orientation (also oblique).

    The new grid has the same centre as the old one and covers the same physical extent
    rounded to whole new voxels.
    """
    new = _as_spacing(spacing)
    old = np.array(spacing_of(img))
    shape = np.array(img.shape[:3])
    new_shape = np.maximum(1, np.round(shape * old / new)).astype(int)
    scale = new / old  # old voxels per new voxel
    # grid centres coincide: new voxel i ↦ old voxel scale * (i - c_new) + c_old
    offset = (shape - 1) / 2.0 - scale * (new_shape - 1) / 2.0
    data = np.asanyarray(img.dataobj).astype(np.float32, copy=False)
    if np.allclose(scale, 1.0) and np.allclose(offset, 0.0):
        return img
    out = ndimage.affine_transform(
        data, scale, offset=offset, output_shape=tuple(new_shape), order=order,
        mode="nearest", prefilter=order > 1,
    )
    vox2vox = np.eye(4)
    vox2vox[:3, :3] = np.diag(scale)
    vox2vox[:3, 3] = offset
    affine = img.affine @ vox2vox
    return _new_image(out.astype(np.float32), affine, img)


def resample_to_reference(
    img: nib.Nifti1Image,
    reference: nib.Nifti1Image,
    *,
    order: int = 1,
    cval: float = 0.0,
) -> nib.Nifti1Image:
    """Resample ``img`` onto the voxel grid (shape, affine) of ``reference``."""
    ref2img = np.linalg.inv(img.affine) @ reference.affine
    data = np.asanyarray(img.dataobj).astype(np.float32, copy=False)
    if np.allclose(ref2img, np.eye(4), atol=1e-6) and img.shape[:3] == reference.shape[:3]:
        return like(data, reference)
    out = ndimage.affine_transform(
        data, ref2img[:3, :3], offset=ref2img[:3, 3], output_shape=reference.shape[:3],
        order=order, mode="constant", cval=cval, prefilter=order > 1,
    )
    return like(out.astype(np.float32), reference)


def same_grid(a: nib.Nifti1Image, b: nib.Nifti1Image, atol: float = 1e-3) -> bool:
    """True if two images share shape and affine (to ``atol`` mm)."""
    return a.shape[:3] == b.shape[:3] and np.allclose(a.affine, b.affine, atol=atol)


# --------------------------------------------------------------------------- saving
def geometry_only(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """``img``'s shape, affine and header without its voxels (a zero-strided view of one
    float): a reference for :func:`like` / :func:`from_canonical` that lets the caller free
    the voxel data."""
    data = np.broadcast_to(np.zeros((), np.float32), img.shape)
    return _new_image(data, img.affine, img)


def like(data: np.ndarray, reference: nib.Nifti1Image) -> nib.Nifti1Image:
    """A new float32 image with ``data`` and the reference's affine, header and xform codes."""
    data = np.asarray(data)
    if data.dtype != np.uint8:
        data = data.astype(np.float32, copy=False)
    return _new_image(data, reference.affine, reference)


def save_nifti(
    data: np.ndarray | nib.Nifti1Image,
    path: str | Path,
    *,
    affine: np.ndarray | None = None,
    reference: nib.Nifti1Image | None = None,
    protect: Iterable[str | Path] = (),
    overwrite: bool = True,
) -> Path:
    """Write a NIfTI file atomically (temporary file in the same folder, then rename).

    Args:
        data: array or image. With an array give ``reference`` (affine + header + xform codes
            copied) or ``affine`` (qform/sform code 1, scanner space).
        path: destination ``.nii`` or ``.nii.gz``; parent folders are created.
        protect: paths that must not be overwritten (the inputs); an error if ``path`` is one.
        overwrite: if False, an existing ``path`` is an error.
    """
    path = Path(path)
    local = OutputGuard(overwrite=overwrite)
    for p in protect:
        local.protect_input(p)
    local.check(path, nifti=True)  # the active guard (if any) checks again in atomic_write
    if isinstance(data, nib.Nifti1Image):
        img = data
    elif reference is not None:
        img = like(data, reference)
    elif affine is not None:
        arr = np.asarray(data)
        img = nib.Nifti1Image(arr, np.asarray(affine, dtype=float))
        img.set_qform(img.affine, code=1)
        img.set_sform(img.affine, code=1)
    else:
        raise RtfsynError("save_nifti needs a reference image or an affine for array data")
    suffix = ".nii.gz" if str(path).lower().endswith(".gz") else ".nii"
    return atomic_write(path, lambda tmp: nib.save(img, tmp), suffix=suffix)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], Any], suffix: str = "") -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it onto ``path``.

    Every file rtfsyn writes goes through here. If an :class:`OutputGuard` is active
    (``with guard:``), ``path`` is checked against it first. A crash, an error or Ctrl-C leaves
    ``path`` untouched and removes the temporary file; an ``OSError`` (disk full, permission
    changed, folder removed) becomes a one-line :class:`OutputWriteError`. The final file gets
    the usual permissions (``0o666`` minus the umask), not ``mkstemp``'s ``0o600``.
    """
    path = Path(path)
    guard = active_guard()
    if guard is not None:
        guard.check(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}",
                                   dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        _remove_quietly(tmp)
        reason = exc.strerror or str(exc).splitlines()[0] or type(exc).__name__
        raise OutputWriteError(
            f"cannot write {path}: {reason}; nothing was written there (check free space and "
            "permissions)"
        ) from exc
    except BaseException:
        _remove_quietly(tmp)
        raise
    return path


def _remove_quietly(tmp: str | None) -> None:
    if tmp is not None:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


# --------------------------------------------------------------------------- output guard
#: the active guards, innermost last; process-wide (not a ContextVar) so that writes from
#: worker threads (e.g. the phantom writer) are checked too
_ACTIVE: list[OutputGuard] = []


def sidecar_paths(path: str | Path) -> list[Path]:
    """The JSON sidecar name(s) that BIDS / rtfsyn would read as metadata of a NIfTI file."""
    p = Path(path)
    for suffix in NIFTI_SUFFIXES:
        if p.name.lower().endswith(suffix):
            return [p.with_name(p.name[: -len(suffix)] + ".json")]
    return []


class OutputGuard:
    """The one check every output path goes through (images, provenance, panels, reports).

    A path is refused if it is a protected file (an input, a metadata file passed in, or the
    sidecar name of an input, existing or not), if it exists and ``overwrite`` is False, if
    its folder cannot be written, or (with :meth:`plan`) if another output of the same run
    already claimed it. Use :meth:`plan` while validating (before any work), and ``with
    guard:`` around the work so that :func:`atomic_write` checks each write again.
    """

    def __init__(self, *, overwrite: bool = False) -> None:
        self.overwrite = overwrite
        self._protected: dict[Path, str] = {}
        self._inodes: dict[tuple[int, int], str] = {}
        self._planned: dict[Path, str] = {}

    # ------------------------------------------------------------------ protection
    def protect(self, path: str | Path | None, why: str | None = None) -> None:
        """Never write ``path``; ``why`` completes "refusing to overwrite ..."."""
        if path is None:
            return
        p = Path(path)
        why = why or f"input file {p}"
        self._protected.setdefault(_key(p), why)
        with contextlib.suppress(OSError):
            st = p.stat()
            self._inodes.setdefault((st.st_dev, st.st_ino), why)

    def protect_input(self, path: str | Path) -> None:
        """Protect an input image and its sidecar name (which is read as its metadata)."""
        p = Path(path)
        self.protect(p, f"input file {p}")
        for side in sidecar_paths(p):
            self.protect(side, f"{side}, the metadata sidecar of input {p.name}")

    # ------------------------------------------------------------------ checks
    def check(self, path: str | Path, *, nifti: bool = False) -> Path:
        """Raise :class:`OutputPathError` (one line) if ``path`` must not be written."""
        p = Path(path)
        if nifti and not is_nifti_path(p):
            ext = "".join(p.suffixes) or "no extension"
            raise OutputPathError(
                f"output {p} must end in .nii or .nii.gz (got {ext}): choose a NIfTI file name"
            )
        why = self._protected.get(_key(p))
        if why is None:
            with contextlib.suppress(OSError):
                st = p.stat()
                why = self._inodes.get((st.st_dev, st.st_ino))
        if why is not None:
            raise OutputPathError(f"refusing to overwrite {why}: choose another output path")
        if p.is_dir():
            raise OutputPathError(f"output {p} is a folder: give a file name")
        if p.exists() and not self.overwrite:
            raise OutputPathError(f"output {p} exists: pass --overwrite or choose another path")
        folder = p.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise OutputPathError(f"cannot write {p}: {folder} is a file, not a folder")
        if not _writable(folder):
            raise OutputPathError(
                f"cannot write {p}: folder {folder} is not writable; choose another output path"
            )
        return p

    def plan(self, path: str | Path, *, nifti: bool = False, what: str = "") -> Path:
        """:meth:`check` now, before any work, and claim ``path`` for this run."""
        p = self.check(path, nifti=nifti)
        key = _key(p)
        if key in self._planned:
            raise OutputPathError(
                f"two outputs would be written to {p} ({self._planned[key]} and "
                f"{what or 'another'}): rename an input or choose another output"
            )
        self._planned[key] = what or str(p)
        return p

    def __enter__(self) -> OutputGuard:
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for i in range(len(_ACTIVE) - 1, -1, -1):
            if _ACTIVE[i] is self:
                del _ACTIVE[i]
                break


def active_guard() -> OutputGuard | None:
    """The innermost active :class:`OutputGuard` (``with guard:``), if any."""
    return _ACTIVE[-1] if _ACTIVE else None


def _writable(folder: Path) -> bool:
    """Can files be created in ``folder``? (root passes permission bits, not a read-only fs)"""
    return os.access(folder, os.W_OK | os.X_OK)


def _key(path: Path) -> Path:
    return Path(os.path.abspath(path)).resolve()


# --------------------------------------------------------------------------- helpers
def _check_raw_pixdim(path: Path, is_gz: bool) -> None:
    """Reject zero voxel sizes that nibabel would silently replace by 1 on load."""
    opener = gzip.open if is_gz else open
    try:
        with opener(path, "rb") as fh:
            raw = nib.Nifti1Header.from_fileobj(fh, check=False)
    except Exception:
        return  # NIfTI-2 or unusual header: nibabel's own checks apply
    if int(raw["sform_code"]) > 0:
        return  # the sform defines the grid; validate_image checks it
    pixdim = [float(x) for x in raw["pixdim"][1:4]]
    if any(abs(x) < 1e-6 for x in pixdim):
        raise InputImageError(
            f"{path}: voxel sizes {tuple(pixdim)} include zero (pixdim); fix the header "
            "(e.g. fslchpixdim) before use"
        )


def _as_spacing(spacing: float | Sequence[float]) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(spacing, dtype=float))
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.size != 3 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise RtfsynError(
            f"spacing {spacing!r} is invalid: give one or three positive sizes in mm"
        )
    return arr


def _copy_xforms(src: nib.Nifti1Image, dst: nib.Nifti1Image) -> None:
    qform, qcode = src.get_qform(coded=True)
    sform, scode = src.get_sform(coded=True)
    if qform is not None:
        dst.set_qform(qform, code=int(qcode))
    else:
        dst.set_qform(None, code=0)
    if sform is not None:
        dst.set_sform(sform, code=int(scode))
    else:
        dst.set_sform(None, code=0)


def _new_image(data: np.ndarray, affine: np.ndarray, template: nib.Nifti1Image) -> nib.Nifti1Image:
    header = template.header.copy() if isinstance(template.header, nib.Nifti1Header) else None
    if header is not None:
        header.set_data_shape(data.shape)
        header.set_data_dtype(data.dtype)
        header.set_slope_inter(None, None)
    img = nib.Nifti1Image(data, affine, header=header)
    qcode = int(template.header["qform_code"]) if header is not None else 1
    scode = int(template.header["sform_code"]) if header is not None else 1
    if qcode == 0 and scode == 0:
        qcode = scode = 1
    img.set_qform(affine, code=qcode or 0)
    img.set_sform(affine, code=scode or 0)
    if qcode == 0:
        img.set_qform(None, code=0)
    if scode == 0:
        img.set_sform(None, code=0)
    return img
