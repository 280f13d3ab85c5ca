"""Geometry of the synthetic male pelvis: random anatomy parameters and a tissue map in millimetres.

Everything here is defined in patient millimetres in RAS+ world coordinates (+x the patient's right,
+y anterior, +z superior; the convention is stated in :mod:`radmtl.data.laterality`) relative to the
centre of the field of view, so the same seed gives the same anatomy on any grid.
Shapes are signed distance functions (negative inside, in mm); a union is a minimum. Signed
distances (rather than booleans) let bones get a cortical shell of a given thickness in mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Tissue classes of the tissue map; phantom.py maps each to CT HU and MR intensity.
AIR, FAT, MUSCLE, PELVIC_FAT, CORTICAL, TRABECULAR = 0, 1, 2, 3, 4, 5
URINE, BLADDER_WALL, PROSTATE, RECTAL_WALL, RECTAL_CONTENT, RECTAL_GAS = 6, 7, 8, 9, 10, 11
BOWEL_WALL, BOWEL_GAS = 12, 13  # sigmoid and small-bowel loops (radmtl.data.phantom.realism)
TISSUE_NAMES = {
    AIR: "air", FAT: "fat", MUSCLE: "muscle", PELVIC_FAT: "pelvic_fat", CORTICAL: "cortical_bone",
    TRABECULAR: "trabecular_bone", URINE: "urine", BLADDER_WALL: "bladder_wall",
    PROSTATE: "prostate", RECTAL_WALL: "rectal_wall", RECTAL_CONTENT: "rectal_content",
    RECTAL_GAS: "rectal_gas", BOWEL_WALL: "bowel_wall", BOWEL_GAS: "bowel_gas",
}

# Least muscle (mm) between any bone surface and the subcutaneous fat.
BONE_MUSCLE_MM = 6.0

# Organ labels (Bragman et al. 2018 numbering); phantom.py exposes them as PHANTOM_LABELS.
BLADDER, RECTUM, PROSTATE_LABEL, FEMORAL_HEAD_LEFT, FEMORAL_HEAD_RIGHT = 1, 2, 3, 4, 5


@dataclass(frozen=True)
class Anatomy:
    """Random per-case anatomy, all lengths in mm and angles in radians."""

    rotation_z: float
    shift: np.ndarray  # (3,) translation of the whole anatomy
    body_axes: tuple[float, float, float]  # lateral, anterior, posterior semi-axes at the hips
    body_lobes: tuple[float, float]  # amplitude and phase of a 2-lobed outline perturbation
    fat_thickness: float
    head_radius: float
    head_center: np.ndarray  # (3,) centre of the RIGHT femoral head (RAS x > 0); the left one is mirrored
    head_asymmetry: np.ndarray  # (3,) offset of the left head from the exact mirror
    cortex_mm: float
    prostate_center: np.ndarray
    prostate_axes: np.ndarray
    bladder_axes: np.ndarray
    bladder_wall: float
    rectum_axes: np.ndarray  # lateral, antero-posterior semi-axes of the outer wall
    rectum_wall: float
    rectum_curve: float
    gas_pockets: np.ndarray  # (n, 7): z offset, x frac, y frac, radii (3), present flag
    symphysis_y: float
    # Proximal femur (both sides, mirrored): the neck leaves the head laterally and inferiorly.
    neck_angle: float  # neck axis from the downward vertical (neck-shaft angle ≈ 180° − this)
    femoral_offset: float  # lateral distance from the head centre to the shaft axis
    anteversion: float  # the neck points anteriorly from its base towards the head


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one case's anatomy. The number and order of draws never depend on the grid."""
    u = rng.uniform
    head_radius = u(22.0, 26.0)
    head_center = np.array([u(84.0, 96.0), u(-2.0, 12.0), u(-8.0, 8.0)])
    prostate_axes = np.array([u(18.0, 25.0), u(13.0, 19.0), u(15.0, 21.0)])
    # The prostate base lies about at the level of the femoral heads, apex lower.
    prostate_center = np.array([u(-3.0, 3.0), u(8.0, 18.0), head_center[2] - u(12.0, 22.0)])
    filling = u(0.0, 1.0)  # bladder filling drives its size
    bladder_axes = np.array([30.0 + 16.0 * filling, 24.0 + 20.0 * filling, 22.0 + 22.0 * filling])
    bladder_axes *= u(0.9, 1.1, size=3)
    gas = np.column_stack([
        u(-10.0, 80.0, size=4),  # z offset from the prostate centre
        u(-0.5, 0.5, size=4), u(-0.5, 0.5, size=4),
        u(4.0, 14.0, size=(4, 3)),
        rng.random(4) < 0.55,  # each pocket present with probability 0.55
    ])
    return Anatomy(
        rotation_z=np.deg2rad(u(-5.0, 5.0)),
        shift=np.array([u(-8.0, 8.0), u(-8.0, 8.0), u(-6.0, 6.0)]),
        body_axes=(u(160.0, 178.0), u(100.0, 122.0), u(98.0, 112.0)),
        body_lobes=(u(0.0, 0.05), u(0.0, 2.0 * np.pi)),
        fat_thickness=u(10.0, 28.0),
        head_radius=head_radius,
        head_center=head_center,
        head_asymmetry=u(-3.0, 3.0, size=3),
        cortex_mm=u(3.5, 5.5),
        prostate_center=prostate_center,
        prostate_axes=prostate_axes,
        bladder_axes=bladder_axes,
        bladder_wall=u(2.5, 4.0),
        rectum_axes=np.array([u(15.0, 21.0), u(11.0, 16.0)]),
        rectum_wall=u(3.0, 5.0),
        rectum_curve=u(0.002, 0.006),
        gas_pockets=gas,
        symphysis_y=u(52.0, 64.0),
        # Drawn last so that adding the femur left every earlier draw (and so the rest of the
        # anatomy of a seed) unchanged.
        neck_angle=np.deg2rad(u(48.0, 58.0)),
        femoral_offset=u(36.0, 44.0),
        anteversion=np.deg2rad(u(5.0, 20.0)),
    )


def _floats(values) -> list[float]:
    # Python floats keep float32 coordinate arrays float32 (NumPy 2 promotes on float64 scalars).
    return [float(v) for v in values]


def sd_sphere(p: tuple[np.ndarray, ...], center, radius: float) -> np.ndarray:
    x, y, z = p
    center, radius = _floats(center), float(radius)
    return np.sqrt((x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2) - radius


def sd_ellipsoid(p: tuple[np.ndarray, ...], center, axes) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipsoid (exact on the axes, mm)."""
    center, axes = _floats(center), _floats(axes)
    x, y, z = (p[i] - center[i] for i in range(3))
    k0 = np.sqrt((x / axes[0]) ** 2 + (y / axes[1]) ** 2 + (z / axes[2]) ** 2)
    k1 = np.sqrt((x / axes[0] ** 2) ** 2 + (y / axes[1] ** 2) ** 2 + (z / axes[2] ** 2) ** 2)
    # k0·(k0 − 1)/k1 is a good distance bound away from the centre; the centre itself is deep inside.
    return np.where(k1 > 1e-6, k0 * (k0 - 1.0) / np.maximum(k1, 1e-6), -min(axes))


def sd_capsule(p: tuple[np.ndarray, ...], a, b, radius: float) -> np.ndarray:
    """Signed distance to a round-ended tube from point ``a`` to point ``b`` (mm)."""
    a, b = _floats(a), _floats(b)
    ab = [b[i] - a[i] for i in range(3)]
    inv_len2 = 1.0 / sum(v * v for v in ab)
    d = [p[i] - a[i] for i in range(3)]
    t = np.clip((d[0] * ab[0] + d[1] * ab[1] + d[2] * ab[2]) * inv_len2, 0.0, 1.0)
    return np.sqrt(sum((d[i] - t * ab[i]) ** 2 for i in range(3))) - float(radius)


def _mirror(point) -> np.ndarray:
    return np.array([-point[0], point[1], point[2]])


def _hemipelvis(p, head: np.ndarray, side: float, anatomy: Anatomy, joint_gap: float) -> np.ndarray:
    """Signed distance of one hip bone and femur.

    ``side`` is the sign of RAS x towards this side's lateral: +1 for the patient's right, −1 for the
    left (:mod:`radmtl.data.laterality`).
    """
    hx, hy, hz = head
    r = anatomy.head_radius
    sy = anatomy.symphysis_y
    pz = anatomy.prostate_center[2]
    # Acetabulum: a cup medial-superior to the head, hollowed by the head plus the joint space.
    cup = sd_ellipsoid(p, (hx - side * 12.0, hy - 2.0, hz + 8.0), (24.0, 32.0, 32.0))
    cup = np.maximum(cup, -sd_sphere(p, head, r + joint_gap))
    ilium_column = sd_capsule(p, (hx - side * 10.0, hy - 8.0, hz + 18.0),
                              (hx - side * 4.0, hy - 45.0, hz + 60.0), 15.0)
    # The iliac wing is a thin plate flaring laterally and anteriorly above the acetabulum.
    wing = sd_ellipsoid(_rotate_z(p, (hx, hy - 40.0, hz + 80.0), side * np.deg2rad(35.0)),
                        (0.0, 0.0, 0.0), (11.0, 55.0, 45.0))
    superior_ramus = sd_capsule(p, (hx - side * 20.0, hy + 18.0, hz + 2.0),
                                (side * 14.0, sy, pz + 10.0), 9.0)
    tuberosity = (side * 58.0, hy - 28.0, hz - 48.0)
    ischium = sd_capsule(p, (hx - side * 15.0, hy - 14.0, hz - 5.0), tuberosity, 12.0)
    inferior_ramus = sd_capsule(p, (side * 10.0, sy - 6.0, pz - 18.0), tuberosity, 8.0)
    symphysis = sd_ellipsoid(p, (side * 9.0, sy, pz - 4.0), (8.0, 10.0, 22.0))
    return np.minimum.reduce([cup, ilium_column, wing, superior_ramus, ischium, inferior_ramus,
                              symphysis, _proximal_femur(p, head, side, anatomy)])


def _proximal_femur(p, head: np.ndarray, side: float, anatomy: Anatomy) -> np.ndarray:
    """Signed distance of the femoral head, neck, trochanters and proximal shaft of one side.

    The neck runs from the head centre laterally, inferiorly and slightly posteriorly to the shaft
    axis (the femoral offset); the greater trochanter rises superolaterally at its base, the lesser
    trochanter posteromedially below it, and the shaft descends slightly medially. A femoral head
    therefore looks different from its mirror image, so its side can be read locally.
    """
    hx, hy, hz = (float(v) for v in head)
    r = anatomy.head_radius
    offset = anatomy.femoral_offset
    # Base of the neck on the shaft axis.
    bx = hx + side * offset
    by = hy - offset * float(np.tan(anatomy.anteversion))
    bz = hz - offset / float(np.tan(anatomy.neck_angle))
    femur_head = sd_sphere(p, head, r)
    neck = sd_capsule(p, head, (bx, by, bz), 0.62 * r)
    greater = sd_ellipsoid(p, (bx + side * 5.0, by - 4.0, bz + 13.0), (11.0, 14.0, 18.0))
    lesser = sd_sphere(p, (bx - side * 11.0, by - 9.0, bz - 30.0), 8.0)
    # The anatomical shaft axis is adducted ~7° from the vertical: it runs medially downwards.
    shaft = sd_capsule(p, (bx, by, bz + 6.0), (bx - side * 25.0, by + 4.0, bz - 200.0), 13.5)
    return np.minimum.reduce([femur_head, neck, greater, lesser, shaft])


def _rotate_z(p, center, angle: float) -> tuple[np.ndarray, ...]:
    """Coordinates relative to ``center`` in a frame rotated by ``angle`` about +z."""
    c, s = float(np.cos(angle)), float(np.sin(angle))
    center = _floats(center)
    x, y = p[0] - center[0], p[1] - center[1]
    return (c * x + s * y, -s * x + c * y, p[2] - center[2])


# Sigmoid and small-bowel loops fill the pelvic fat above the bladder and behind it, up to the
# sacral promontory: centre relative to the prostate (x, y, z) and semi-axes of that region (mm).
BOWEL_REGION_OFFSET = (0.0, -20.0, 80.0)
BOWEL_REGION_AXES = (48.0, 32.0, 38.0)


def _paint_bowel(tissue: np.ndarray, p, anatomy: Anatomy, pockets: np.ndarray, wall_mm: float) -> None:
    """Gas pockets, each in a soft-tissue wall, painted over pelvic fat only (organs are painted later)."""
    pc = _floats(anatomy.prostate_center)
    centre = [pc[i] + BOWEL_REGION_OFFSET[i] for i in range(3)]
    # Only pelvic fat is painted over, so the pockets' distances are needed there alone (a few per cent
    # of the grid; the whole grid took a quarter of a case's time).
    fat = np.flatnonzero(tissue == PELVIC_FAT)
    if not fat.size:
        return
    q = tuple(np.broadcast_to(c, tissue.shape).reshape(-1)[fat] for c in p)
    sd = None
    for fx, fy, fz, rx, ry, rz, present in pockets.tolist():
        if present:
            at = [centre[i] + f * BOWEL_REGION_AXES[i] for i, f in enumerate((fx, fy, fz))]
            pocket = sd_ellipsoid(q, at, (rx, ry, rz))
            sd = pocket if sd is None else np.minimum(sd, pocket)
    if sd is None:
        return
    flat = tissue.reshape(-1)
    flat[fat[sd <= wall_mm]] = BOWEL_WALL
    flat[fat[sd <= 0]] = BOWEL_GAS


def build_tissue_map(
    coords_mm: tuple[np.ndarray, np.ndarray, np.ndarray], anatomy: Anatomy,
    bowel_gas: np.ndarray | None = None, bowel_wall_mm: float = 2.5,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Paint tissues and organ labels on a grid.

    Args:
        coords_mm: world RAS coordinates (mm) of the voxel centres, three arrays of shape (X, Y, Z)
            (or broadcastable to it).
        anatomy: the case's anatomy from :func:`sample_anatomy`.
        bowel_gas: (n, 7) sigmoid/small-bowel gas pockets (centre as fractions of the bowel region's
            semi-axes, three semi-axes in mm, present flag), from
            :func:`radmtl.data.phantom.realism.draw_case_realism`; None or empty: none.
        bowel_wall_mm: thickness of the soft-tissue wall around each pocket.

    Returns:
        ``tissue`` (X, Y, Z) uint8 tissue classes, ``labels`` (X, Y, Z) uint8 organ labels, and
        ``extras``: ``body`` (X, Y, Z) bool, the body outline (it contains every bone).
    """
    shape = np.broadcast_shapes(*(c.shape for c in coords_mm))
    # The whole anatomy is rotated/shifted, so evaluate shapes at the inversely mapped coordinates.
    p = _rotate_z(coords_mm, anatomy.shift, anatomy.rotation_z)
    p = tuple(np.broadcast_to(c, shape).astype(np.float32) for c in p)
    x, y, z = p

    # Bones: right hemipelvis + femur at RAS x > 0 (the patient's right), mirrored to the left with a
    # small asymmetry, and the sacrum.
    head_right = anatomy.head_center
    head_left = _mirror(head_right) + anatomy.head_asymmetry
    joint_gap = 2.5
    sd_bone = np.minimum(_hemipelvis(p, head_right, 1.0, anatomy, joint_gap),
                         _hemipelvis(p, head_left, -1.0, anatomy, joint_gap))
    hz = float(head_right[2])
    sacrum = np.minimum.reduce([
        sd_capsule(p, (0.0, -68.0, hz + 130.0), (0.0, -80.0, hz + 60.0), 20.0),
        sd_capsule(p, (0.0, -80.0, hz + 60.0), (0.0, -76.0, hz + 20.0), 15.0),
        sd_capsule(p, (0.0, -76.0, hz + 20.0), (0.0, -62.0, hz - 10.0), 7.0),
        # Sacral alae reach the iliac wings (sacro-iliac joints).
        sd_ellipsoid(p, (0.0, -74.0, hz + 85.0), (62.0, 16.0, 22.0)),
    ])
    sd_bone = np.minimum(sd_bone, sacrum)

    a, b_ant, b_post = anatomy.body_axes
    # Hips are widest around the femoral heads; the outline narrows a little above and below.
    taper = 1.0 - 0.08 * ((z - float(anatomy.head_center[2])) / 100.0) ** 2
    b = np.where(y >= 0, b_ant, b_post)
    theta = np.arctan2(y / b, x / a)
    lobes = 1.0 + anatomy.body_lobes[0] * np.cos(2.0 * theta + anatomy.body_lobes[1])
    radius = np.sqrt((x / (a * taper)) ** 2 + (y / (b * taper)) ** 2) / lobes  # 1 at the skin
    # Mean radius in mm turns the fat thickness (mm) into the normalised radius of the muscle wall.
    inner = radius <= 1.0 - anatomy.fat_thickness / (0.5 * (a + 0.5 * (b_ant + b_post)))
    # Bone is always wrapped in muscle and then skin: where a greater trochanter or an iliac crest
    # reaches past the ellipse, the outline bulges over it (as hips do) instead of cutting the bone.
    inner |= sd_bone <= BONE_MUSCLE_MM
    body = (radius <= 1.0) | (sd_bone <= BONE_MUSCLE_MM + max(0.5 * anatomy.fat_thickness, 5.0))

    tissue = np.full(shape, AIR, dtype=np.uint8)
    tissue[body] = FAT
    tissue[inner] = MUSCLE

    pc, pa = _floats(anatomy.prostate_center), _floats(anatomy.prostate_axes)
    fat_pad = sd_ellipsoid(p, (0.0, pc[1] - 8.0, pc[2] + 30.0), (58.0, 62.0, 95.0)) <= 0
    tissue[fat_pad & inner] = PELVIC_FAT

    bone = (sd_bone <= 0) & inner
    tissue[bone] = TRABECULAR
    tissue[bone & (sd_bone > -anatomy.cortex_mm)] = CORTICAL
    if bowel_gas is not None and len(bowel_gas):
        _paint_bowel(tissue, p, anatomy, bowel_gas, bowel_wall_mm)

    # Rectum: an elliptical tube anterior to the sacrum, curving posteriorly away from the prostate
    # level; it narrows towards the anal canal.
    ra, rb = _floats(anatomy.rectum_axes)
    rectum_y0 = pc[1] - pa[1] - 3.0 - rb
    dz = z - pc[2]
    cy = rectum_y0 - anatomy.rectum_curve * dz**2
    narrowing = np.clip((dz + 50.0) / 30.0, 0.45, 1.0)
    rect_r = np.sqrt((x / (ra * narrowing)) ** 2 + ((y - cy) / (rb * narrowing)) ** 2)
    in_z = (dz >= -55.0) & (dz <= 95.0)
    rectum = (rect_r <= 1.0) & in_z
    lumen = (rect_r <= 1.0 - anatomy.rectum_wall / min(ra, rb)) & in_z
    tissue[rectum] = RECTAL_WALL
    tissue[lumen] = RECTAL_CONTENT
    gas = np.zeros(shape, dtype=bool)
    for dz_gas, fx, fy, rx, ry, rz, present in anatomy.gas_pockets.tolist():
        if present:
            centre = (fx * ra, rectum_y0 - anatomy.rectum_curve * dz_gas**2 + fy * rb, pc[2] + dz_gas)
            gas |= sd_ellipsoid(p, centre, (rx, ry, rz)) <= 0
    tissue[gas & lumen] = RECTAL_GAS

    # Bladder sits on the prostate base (slightly indented by it), anterior to the rectum.
    ba = _floats(anatomy.bladder_axes)
    bladder_c = (0.0, pc[1] + 10.0, pc[2] + pa[2] + 0.7 * ba[2])
    sd_bladder = sd_ellipsoid(p, bladder_c, ba)
    bladder = sd_bladder <= 0
    tissue[bladder] = BLADDER_WALL
    tissue[sd_bladder <= -anatomy.bladder_wall] = URINE
    prostate = sd_ellipsoid(p, pc, pa) <= 0
    tissue[prostate] = PROSTATE

    labels = np.zeros(shape, dtype=np.uint8)
    labels[bladder & ~prostate] = BLADDER
    labels[rectum] = RECTUM
    labels[prostate] = PROSTATE_LABEL
    is_bone = (tissue == CORTICAL) | (tissue == TRABECULAR)
    labels[(sd_sphere(p, head_left, anatomy.head_radius) <= 0) & is_bone] = FEMORAL_HEAD_LEFT
    labels[(sd_sphere(p, head_right, anatomy.head_radius) <= 0) & is_bone] = FEMORAL_HEAD_RIGHT
    # Organs are painted inside the muscle wall by construction; enforce it so a label never leaks.
    labels[~body] = 0
    extras = {"body": body}
    return tissue, labels, extras
