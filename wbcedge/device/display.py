"""`wbcedge run --show`: the live window, boxes and running counts drawn with OpenCV.

Needs a display and an OpenCV build with GUI support (Pi OS's and JetPack's system OpenCV
have it; `opencv-python-headless` does not).
"""

from __future__ import annotations

from wbcedge.device.pipeline import UNIDENTIFIED
from wbcedge.errors import WbcedgeError


class LiveWindow:
    """Boxes, labels and running counts over each frame in an OpenCV window."""

    def __init__(self, classes, shift_monitor=None):
        self.counts = {c: 0 for c in (*classes, UNIDENTIFIED)}
        self.shift_monitor = shift_monitor  # wbcedge.device.shift.ShiftMonitor, or None (check off)

    def update(self, frame, cells, counted) -> None:
        import cv2
        for c in counted:
            self.counts[c.label] += 1
        view = frame.image.copy()
        for c in cells:
            x0, y0, x1, y1 = c.box.box
            cv2.rectangle(view, (x0, y0), (x1, y1), (0, 255, 0), 2)
            cv2.putText(view, f"{c.label} {c.confidence:.2f}", (x0, max(12, y0 - 4)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1)
        text = "  ".join(f"{k[:4]} {v}" for k, v in self.counts.items())
        cv2.putText(view, text, (8, view.shape[0] - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
        shift_text, colour = shift_banner(self.shift_monitor)
        cv2.putText(view, shift_text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, colour, 2)
        try:
            cv2.imshow("wbcedge", view)
            cv2.waitKey(1)
        except cv2.error as exc:
            raise WbcedgeError(f"--show needs a display and an OpenCV build with GUI support ({exc}); "
                               "run headless (the default) and open report.html instead") from exc

    def close(self) -> None:
        import cv2
        try:
            cv2.destroyAllWindows()
        except cv2.error:
            pass


def shift_banner(monitor) -> tuple[str, tuple[int, int, int]]:
    """The live window's domain-shift line and its BGR colour: red while the alarm is on."""
    if monitor is None:
        return "shift check off", (200, 200, 200)
    state = monitor.state()
    if state["alarm"]:
        return (f"DOMAIN SHIFT: cells unlike training data ({state['score']:.2f} > {state['threshold']:.2f}); "
                "differential not valid", (0, 0, 255))
    if not state["judged"]:
        return f"shift check: {state['cells']}/{state['min_cells']} cells", (200, 200, 200)
    return f"shift ok ({state['score']:.2f} <= {state['threshold']:.2f})", (0, 200, 0)
