"""What machine a benchmark ran on, so its figures can be read and compared honestly.

    info = machine_info()      # a plain dict, straight into JSON

CPU model and cores, architecture, OS, Python and runtime versions, the CPU
frequency governor, the load average (other jobs skew timings), and on a
Raspberry Pi the throttling and temperature state (`vcgencmd`), on a Jetson the
power mode (`nvpmodel -q`). Anything that cannot be read is recorded as a note,
never an error. No TensorFlow, no runtime imports: versions come from package
metadata. Standard library only.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from wbcedge.provenance import package_versions

GOVERNOR_FILE = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
PI_MODEL_FILE = Path("/proc/device-tree/model")
JETSON_RELEASE_FILE = Path("/etc/nv_tegra_release")
RUNTIME_PACKAGES = ("wbcedge", "ai-edge-litert", "tflite-runtime", "onnxruntime", "numpy",
                    "opencv-python-headless", "opencv-python", "tensorflow", "tensorflow-cpu", "keras")

# vcgencmd get_throttled bits (Raspberry Pi firmware documentation).
THROTTLE_BITS = {
    0: "under-voltage now", 1: "ARM frequency capped now", 2: "throttled now", 3: "soft temperature limit now",
    16: "under-voltage has occurred", 17: "ARM frequency capping has occurred",
    18: "throttling has occurred", 19: "soft temperature limit has occurred",
}


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo ("model name", or "Model"/"Hardware" on ARM)."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in lines:
            if line.split(":", 1)[0].strip() == key and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask: containers and taskset shrink it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def detect_board(model_file: Path = PI_MODEL_FILE, jetson_file: Path = JETSON_RELEASE_FILE) -> tuple[str, str | None]:
    """("raspberry-pi" | "jetson" | "other", the board's model string if the device tree has one)."""
    try:
        model = model_file.read_bytes().decode("utf-8", "replace").strip("\x00 \n") or None
    except OSError:
        model = None
    if model and "raspberry pi" in model.lower():
        return "raspberry-pi", model
    if jetson_file.exists() or (model and "jetson" in model.lower()):
        return "jetson", model
    return "other", model


def _run_tool(args: list[str], notes: list[str], timeout: float = 5.0) -> str | None:
    """stdout of a system tool, or None with a note saying why not."""
    if shutil.which(args[0]) is None:
        notes.append(f"`{args[0]}` not found: {' '.join(args)} not recorded")
        return None
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        notes.append(f"`{' '.join(args)}` failed: {exc}")
        return None
    if proc.returncode != 0:
        notes.append(f"`{' '.join(args)}` exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:200]}")
        return None
    return proc.stdout.strip()


def decode_throttled(text: str) -> dict:
    """`throttled=0x50000` -> {"raw": "0x50000", "flags": [...], "ok": bool}."""
    raw = text.split("=", 1)[-1].strip()
    try:
        value = int(raw, 16)
    except ValueError:
        return {"raw": raw, "flags": [], "ok": None}
    flags = [name for bit, name in THROTTLE_BITS.items() if value & (1 << bit)]
    return {"raw": raw, "flags": flags, "ok": value == 0}


def machine_info() -> dict:
    """Everything about this machine that changes how fast a model runs; `notes` lists what could not be read."""
    notes: list[str] = []
    board, board_model = detect_board()
    info: dict = {
        "cpu": cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_usable": usable_cores(),
        "arch": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "board": board,
        "board_model": board_model,
        "versions": package_versions(RUNTIME_PACKAGES, with_platform=False),
    }
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_mb"] = round(int(line.split()[1]) / 1024)
    except (OSError, ValueError, IndexError):
        notes.append("/proc/meminfo not readable: total memory not recorded")
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        pass
    try:
        info["cpu_governor"] = GOVERNOR_FILE.read_text().strip()
    except OSError:
        info["cpu_governor"] = None
        notes.append(f"{GOVERNOR_FILE} not readable (no cpufreq here, e.g. a VM): CPU governor unknown")
    if board == "raspberry-pi":
        throttled = _run_tool(["vcgencmd", "get_throttled"], notes)
        info["pi_throttled"] = decode_throttled(throttled) if throttled else None
        temp = _run_tool(["vcgencmd", "measure_temp"], notes)
        info["pi_temperature"] = temp.split("=", 1)[-1] if temp else None
    elif board == "jetson":
        info["jetson_power_mode"] = _run_tool(["nvpmodel", "-q"], notes)
    info["notes"] = notes
    return info


def machine_line(info: dict) -> str:
    """One line for the top of a benchmark table."""
    versions = info.get("versions", {})
    runtimes = ", ".join(f"{k} {v}" for k, v in versions.items()
                         if k in ("ai-edge-litert", "tflite-runtime", "onnxruntime"))
    parts = [f"{info['cpu']} ({info['cores_usable']} of {info['cores_logical']} cores usable, {info['arch']})",
             f"Python {info['python']}", runtimes or "no runtime installed",
             f"governor {info.get('cpu_governor') or 'unknown'}"]
    if info.get("load_average"):
        load = f"load {info['load_average'][0]:.2f}"
        if info.get("load_average_end"):
            load += f" at the start, {info['load_average_end'][0]:.2f} at the end"
        parts.append(load)
    if info.get("board_model"):
        parts.insert(0, info["board_model"])
    if info.get("pi_throttled"):
        t = info["pi_throttled"]
        parts.append("not throttled" if t.get("ok") else f"THROTTLED {t['raw']}: {', '.join(t['flags'])}")
    if info.get("pi_temperature"):
        parts.append(info["pi_temperature"])
    if info.get("jetson_power_mode"):
        parts.append(info["jetson_power_mode"].replace("\n", "; "))
    return " | ".join(parts)
