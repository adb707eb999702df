"""The demo set's tasks: what each variant's clips show and hear, and why fusion matters on them.

Every clip is an H.264 (libx264, yuv420p) + AAC mp4 of `seconds` seconds, drawn from its own random stream
(seed, split, index), so a build is deterministic whatever the number of processes, and no two clips (within or
across splits) share a stream. The demo model sees the whole clip: 8 frames sampled at 2 fps (frame times 0, 0.5, …,
3.5 s for the default 4 s at 8 fps) and a log-mel spectrogram of the whole 4 s. Everything that carries the label is
therefore built to survive that sampling and the compression: visual events last at least 0.5 s (one sampled frame
always sees them), sounds at least 0.25 s, objects are big uniform shapes, tones stand well above the noise.

Three variants, each written to `root/<variant>/{media/*.mp4, classes.txt, train.csv, val.csv, test.csv, meta.csv}`:

``fusion`` — 8 classes = 4 visual patterns × 2 sound patterns. The visual pattern is a big moving object on a
noisy, low-saturation textured background: a red disc, a green square, a blue triangle or a yellow cross (colour and
shape are redundant, so either cue works). The sound pattern is a steady low hum (300–450 Hz) or high beeps
(1.5–2.2 kHz, 0.25 s on / 0.25 s off) above a faint noise floor. Video tells only the visual group, audio only the
sound group. In addition, in each split `CORRUPT_FRACTION` (10 %) of the clips have their video replaced by grey
noise frames and another 10 % their audio replaced by white noise; the class is unchanged. With equal class priors
and recognisable patterns, the Bayes-optimal accuracies are:

- A+V: clean 0.8 × 1 + video corrupted 0.1 × 1/4 (sound group known) + audio corrupted 0.1 × 1/2 = **87.5 %**
- V only: video intact 0.9 × 1/2 (sound group a coin flip) + video corrupted 0.1 × 1/8 = **46.25 %**
- A only: audio intact 0.9 × 1/4 (visual group unknown) + audio corrupted 0.1 × 1/8 = **23.75 %**

``relation`` — 2 classes, `in_sync` / `out_of_sync`. A bright full-frame flash lasting 0.5 s starts at t_v and a
loud 0.5 s beep at t_a, both on the 0.5 s grid of the sampled frames (K = seconds / 0.5 slots). In sync t_a = t_v;
out of sync the beep's slot is the flash's shifted cyclically by s ∈ {3, …, K−3} slots, so |t_a − t_v| ≥ 1.5 s.
Slots and shifts are balanced within each class, so t_v and t_a are each uniform and independent of the label:
A only = V only = **50 %** (chance), A+V = **100 %**. Late fusion trained as MBT trains it (each modality's logits
against the label) stays at chance; even an additive f(video) + g(audio) trained jointly is capped at **75 %** for
K = 8 (exhaustive search over every such decision rule), whereas any model that lets the streams interact can
reach 100 %.

``match`` — 2 classes, `match` / `mismatch`. Every clip shows one full-frame flash lasting 1.0 s (two sampled frames)
from a random start on the 0.5 s grid, RED or BLUE on a dark noisy background, and plays at the same time and for
the same 1.0 s a loud tone that is LOW (300–450 Hz) or HIGH (1.5–2.2 kHz) above a faint noise floor. The label is
the XOR of the two: `match` for red + low or blue + high, `mismatch` for red + high or blue + low. The four
(colour, pitch) cells are balanced within each split (exactly when its size is a multiple of 4), so colour and pitch
are each uniform and independent of the label: A only = V only = **50 %** (chance), A+V = **100 %**. Late fusion
trained as MBT trains it stays at chance, and an additive f(video) + g(audio) is capped at **75 %** (no sum of a
colour term and a pitch term separates an XOR: at best it gets three of the four cells right), whereas a model
whose streams interact learns it quickly. Unlike ``relation``, the relation is between two attributes that each
stream shows plainly for a whole second, not between event times.

`meta.csv` holds per-clip ground truth: split, path, label, visual, sound, corrupted (none / video / audio),
tone_hz, video_event_s (flash onset), audio_event_s (beep or tone onset; first beep for ``beeps``); for ``match``,
visual is the flash colour (red / blue) and sound the pitch (low / high).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VARIANTS = ("fusion", "relation", "match")


SPLITS = ("train", "val", "test")


CORRUPT_FRACTION = 0.1  # per corrupted modality, fusion variant


EVENT_GRID_S = 0.5  # frame spacing of the demo config's sampling (every 4th frame of 8 fps)


MIN_SYNC_GAP_SLOTS = 3  # out-of-sync events are at least 3 slots (1.5 s) apart


MATCH_EVENT_SLOTS = 2  # match: flash and tone last 2 slots (1.0 s), so two sampled frames see the flash


VISUAL_GROUPS = ("red_disc", "green_square", "blue_triangle", "yellow_cross")


SOUND_GROUPS = ("hum", "beeps")


_COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}


_TONE_HZ = {"low": (300, 450), "high": (1500, 2200)}  # fusion's hum / beeps, match's pitches


RELATION_CLASSES = ("in_sync", "out_of_sync")


MATCH_CLASSES = ("match", "mismatch")


MATCH_COLOURS = ("red", "blue")


MATCH_PITCHES = ("low", "high")  # index-aligned with MATCH_COLOURS: colour i + pitch i is a match


META_FIELDS = ("split", "path", "label", "visual", "sound", "corrupted", "tone_hz", "video_event_s",
               "audio_event_s")


_RAMP_S = 0.005  # fade of every tone edge, so that switching a tone on or off does not click across the spectrum


@dataclass(frozen=True)
class ClipPlan:
    """What one clip must show; the split's plan fixes these so that every split is balanced."""

    split: str
    index: int
    label: int
    corrupted: str = "none"  # fusion: none / video / audio
    flash_slot: int = -1  # relation
    beep_slot: int = -1  # relation
    colour: int = -1  # match: index into MATCH_COLOURS
    pitch: int = -1  # match: index into MATCH_PITCHES


@dataclass(frozen=True)
class DemoFormat:
    variant: str
    seconds: float
    fps: int
    size: int
    sample_rate: int
    seed: int


def class_names(variant: str) -> list[str]:
    """The class names of a variant, in class-index order (fusion: visual-major, `<visual>+<sound>`)."""
    check_variant(variant)
    if variant == "fusion":
        return [f"{v}+{s}" for v in VISUAL_GROUPS for s in SOUND_GROUPS]
    return list(MATCH_CLASSES if variant == "match" else RELATION_CLASSES)


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"demo set variant {variant!r} is not one of {', '.join(VARIANTS)}")


def check_format(fmt: DemoFormat, counts: dict[str, int]) -> None:
    for split, n in counts.items():
        if n < 1:
            raise ValueError(f"num_{split} must be at least 1, got {n}")
    if fmt.seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {fmt.seed}")
    if fmt.fps < 2 or fmt.fps % 2:
        raise ValueError(f"fps must be even (events sit on a {EVENT_GRID_S} s grid of whole frames), got {fmt.fps}")
    slots = fmt.seconds / EVENT_GRID_S
    if slots != round(slots) or slots < 2 * MIN_SYNC_GAP_SLOTS:
        raise ValueError(f"seconds must be a multiple of {EVENT_GRID_S} and at least "
                         f"{2 * MIN_SYNC_GAP_SLOTS * EVENT_GRID_S}, got {fmt.seconds}")
    if fmt.size < 32 or fmt.size % 2:
        raise ValueError(f"size must be even (yuv420p) and at least 32 pixels, got {fmt.size}")
    if fmt.sample_rate < 8000:
        raise ValueError(f"sample_rate must be at least 8000 Hz (the beeps reach 2.2 kHz), got {fmt.sample_rate}")


def plan_split(fmt: DemoFormat, split: str, n: int) -> list[ClipPlan]:
    """Balanced labels (counts differ by at most one), balanced nuisances per class, then shuffled."""
    rng = np.random.default_rng([fmt.seed, SPLITS.index(split), 0])
    num_classes = len(class_names(fmt.variant))
    # Round-robin over classes: the k-th clip of every class comes before the (k+1)-th of any class.
    order = [(k, c) for k in range(-(-n // num_classes)) for c in range(num_classes)][:n]
    specs = []
    if fmt.variant == "fusion":
        n_corrupt = round(CORRUPT_FRACTION * n)
        for i, (_, c) in enumerate(order):
            corrupted = "video" if i < n_corrupt else "audio" if i < 2 * n_corrupt else "none"
            specs.append({"label": c, "corrupted": corrupted})
    elif fmt.variant == "match":
        for k, c in order:
            # Alternating the colour within each class balances the four (colour, pitch) cells.
            colour = k % 2
            specs.append({"label": c, "colour": colour, "pitch": colour if c == 0 else 1 - colour})
    else:
        slots = round(fmt.seconds / EVENT_GRID_S)
        shifts = range(MIN_SYNC_GAP_SLOTS, slots - MIN_SYNC_GAP_SLOTS + 1)
        for k, c in order:
            # Cycling the flash slot and, within each full cycle, the shift keeps t_v and t_a uniform per class.
            flash = k % slots
            shift = 0 if c == 0 else shifts[(k // slots) % len(shifts)]
            specs.append({"label": c, "flash_slot": flash, "beep_slot": (flash + shift) % slots})
    perm = rng.permutation(n)
    return [ClipPlan(split, i, **specs[j]) for i, j in enumerate(perm)]


def draw_clip(fmt: DemoFormat, plan: ClipPlan) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """One clip's frames (T, H, W, 3), mono audio and meta.csv fields, from its own random stream."""
    rng = np.random.default_rng([fmt.seed, SPLITS.index(plan.split), 1, plan.index])
    clip = {"fusion": _fusion_clip, "relation": _relation_clip, "match": _match_clip}[fmt.variant]
    return clip(fmt, plan, rng)


def _fusion_clip(fmt: DemoFormat, plan: ClipPlan, rng: np.random.Generator):
    visual, sound = divmod(plan.label, len(SOUND_GROUPS))
    num_frames = round(fmt.seconds * fmt.fps)
    size = fmt.size
    meta = {"visual": VISUAL_GROUPS[visual], "sound": SOUND_GROUPS[sound], "corrupted": plan.corrupted,
            "tone_hz": "", "video_event_s": "", "audio_event_s": ""}

    if plan.corrupted == "video":
        # Grey noise: no object, no colour, a fresh pattern every frame.
        level = rng.uniform(60, 150)
        grey = np.stack([level + _smooth_noise(rng, size, 60) for _ in range(num_frames)])
        grey += 10 * _normal(rng, grey.shape)
        frames = np.repeat(grey[..., None], 3, axis=-1)
    else:
        background = rng.uniform(60, 150) + _smooth_noise(rng, size, 35)[..., None] + rng.uniform(-12, 12, 3)
        frames = background + 4 * _normal(rng, (num_frames, size, size, 3))
        colour_name, shape = VISUAL_GROUPS[visual].split("_")
        colour = np.asarray(_COLOURS[colour_name]) + rng.uniform(-20, 20, 3)
        radius = rng.uniform(0.2, 0.27) * size
        lo, hi = 1.1 * radius, size - 1.1 * radius
        start = rng.uniform(lo, hi, 2)
        angle = rng.uniform(0, 2 * np.pi)
        velocity = rng.uniform(0.15, 0.3) * size * np.array([np.cos(angle), np.sin(angle)])
        ys, xs = np.mgrid[0:size, 0:size] + 0.5
        for i in range(num_frames):
            cx, cy = _bounce(start + velocity * i / fmt.fps, lo, hi)
            frames[i][_shape_mask(shape, xs - cx, ys - cy, radius)] = colour

    n = round(fmt.seconds * fmt.sample_rate)
    t = np.arange(n) / fmt.sample_rate
    if plan.corrupted == "audio":
        audio = rng.normal(0, rng.uniform(0.08, 0.15), n)
    else:
        amplitude = rng.uniform(0.3, 0.5)
        if SOUND_GROUPS[sound] == "hum":
            freq = rng.uniform(*_TONE_HZ["low"])
            gate = _gate(t, 0.0, fmt.seconds, fmt.seconds)
        else:
            freq = rng.uniform(*_TONE_HZ["high"])
            onset = rng.uniform(0, 0.25)
            gate = _gate(t, onset, 0.25, 0.5)
            meta["audio_event_s"] = f"{onset:.4f}"
        meta["tone_hz"] = f"{freq:.2f}"
        audio = amplitude * gate * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
        audio += rng.normal(0, rng.uniform(0.01, 0.03), n)
    return frames, audio, meta


def _relation_clip(fmt: DemoFormat, plan: ClipPlan, rng: np.random.Generator):
    num_frames = round(fmt.seconds * fmt.fps)
    size = fmt.size
    t_flash = plan.flash_slot * EVENT_GRID_S
    t_beep = plan.beep_slot * EVENT_GRID_S

    frames = rng.uniform(20, 60) + 2 * _normal(rng, (num_frames, size, size, 3))
    first = round(t_flash * fmt.fps)
    frames[first:first + round(EVENT_GRID_S * fmt.fps)] += rng.uniform(160, 200)

    n = round(fmt.seconds * fmt.sample_rate)
    t = np.arange(n) / fmt.sample_rate
    freq = rng.uniform(700, 1300)
    # A single beep: period longer than the clip.
    gate = _gate(t, t_beep, EVENT_GRID_S, 2 * fmt.seconds)
    audio = rng.uniform(0.5, 0.7) * gate * np.sin(2 * np.pi * freq * t)
    audio += rng.normal(0, rng.uniform(0.003, 0.01), n)
    meta = {"visual": "", "sound": "", "corrupted": "none", "tone_hz": f"{freq:.2f}",
            "video_event_s": f"{t_flash:g}", "audio_event_s": f"{t_beep:g}"}
    return frames, audio, meta


def _match_clip(fmt: DemoFormat, plan: ClipPlan, rng: np.random.Generator):
    num_frames = round(fmt.seconds * fmt.fps)
    slots = round(fmt.seconds / EVENT_GRID_S)
    onset = int(rng.integers(0, slots - MATCH_EVENT_SLOTS + 1)) * EVENT_GRID_S
    duration = MATCH_EVENT_SLOTS * EVENT_GRID_S
    colour_name, pitch = MATCH_COLOURS[plan.colour], MATCH_PITCHES[plan.pitch]

    # Per-frame base colour: dark everywhere, the saturated flash colour while it lasts; pixel noise on top.
    base = np.full((num_frames, 1, 1, 3), rng.uniform(20, 60))
    first = round(onset * fmt.fps)
    base[first:first + round(duration * fmt.fps)] = np.asarray(_COLOURS[colour_name]) + rng.uniform(-15, 15, 3)
    frames = base + 2 * _normal(rng, (num_frames, fmt.size, fmt.size, 3))

    n = round(fmt.seconds * fmt.sample_rate)
    t = np.arange(n) / fmt.sample_rate
    freq = rng.uniform(*_TONE_HZ[pitch])
    # A single tone: period longer than the clip.
    gate = _gate(t, onset, duration, 2 * fmt.seconds)
    audio = rng.uniform(0.5, 0.7) * gate * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    audio += rng.normal(0, rng.uniform(0.003, 0.01), n)
    meta = {"visual": colour_name, "sound": pitch, "corrupted": "none", "tone_hz": f"{freq:.2f}",
            "video_event_s": f"{onset:g}", "audio_event_s": f"{onset:g}"}
    return frames, audio, meta


def _normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal pixel noise in float32 (twice as fast to draw as float64, and ample for 8-bit frames)."""
    return rng.standard_normal(shape, dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, amplitude: float, grid: int = 5) -> np.ndarray:
    """(size, size) texture: uniform noise on a coarse grid, bilinearly upsampled (cheap to compress)."""
    coarse = rng.uniform(-amplitude, amplitude, (grid, grid))
    pos = np.linspace(0, grid - 1, size)
    left = np.minimum(pos.astype(int), grid - 2)
    frac = pos - left
    upsample = np.zeros((size, grid))
    upsample[np.arange(size), left] = 1 - frac
    upsample[np.arange(size), left + 1] = frac
    return upsample @ coarse @ upsample.T


def _bounce(position: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold a straight-line position into [lo, hi], as if the object bounced off the borders."""
    span = hi - lo
    folded = np.mod(position - lo, 2 * span)
    return lo + np.where(folded > span, 2 * span - folded, folded)


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    # Sizes chosen so that every shape covers a similar area (2.2–3.1 r²): size is no cue.
    if shape == "disc":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return np.maximum(abs(dx), abs(dy)) <= 0.85 * r
    if shape == "triangle":  # apex up, base 2.2 r wide
        return (abs(dy) <= r) & (abs(dx) <= 0.55 * (dy + r))
    if shape == "cross":
        arm, reach = 0.4 * r, 1.1 * r
        return ((abs(dx) <= arm) & (abs(dy) <= reach)) | ((abs(dy) <= arm) & (abs(dx) <= reach))
    raise ValueError(f"unknown shape {shape!r}")


def _gate(t: np.ndarray, onset: float, on: float, period: float) -> np.ndarray:
    """0/1 envelope: `on` seconds every `period` seconds from `onset`, with short linear fades."""
    phase = np.mod(t - onset, period)
    ramp = np.clip(np.minimum(phase, on - phase) / _RAMP_S, 0, 1)
    return np.where((t >= onset) & (phase < on), ramp, 0.0)
