"""Anomaly rule: an EWMA baseline band (mean + z standard deviations) plus absolute floors.

A window's error rate is anomalous when it is above ``min_error_rate`` *and* above the band
(so a service that always fails 6% does not page, and a 0.1% service going to 0.3% does
not either); its p95 latency when it is above ``latency_p95_floor_ms`` and above its band.
Anomalous windows do not move the baseline, so an incident is not learned as normal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from keel.remediation.settings import DetectionSettings
from keel.remediation.stats import Summary

MIN_STD_RATE = 0.01  # a perfectly flat baseline still needs a clear jump
MIN_STD_MS = 25.0


class Band:
    def __init__(self, alpha: float, z: float, floor: float, min_std: float) -> None:
        self.alpha, self.z, self.floor, self.min_std = alpha, z, floor, min_std
        self.mean: float | None = None
        self.var = 0.0

    def upper(self) -> float:
        if self.mean is None:
            return self.floor
        return max(self.floor, self.mean + self.z * max(math.sqrt(self.var), self.min_std))

    def check(self, value: float) -> bool:
        """True when ``value`` is anomalous; otherwise it joins the baseline."""
        if value > self.upper():
            return True
        if self.mean is None:
            self.mean = value
        else:
            diff = value - self.mean
            self.mean += self.alpha * diff
            self.var = (1 - self.alpha) * (self.var + self.alpha * diff * diff)
        return False


@dataclass(frozen=True)
class Anomaly:
    kind: str  # "error_rate" | "latency"
    value: float
    threshold: float
    summary: Summary

    def public(self) -> dict[str, object]:
        return {"kind": self.kind, "value": round(self.value, 4),
                "threshold": round(self.threshold, 4), **self.summary.public()}


class Detector:
    """One per service; fed one window summary per tick."""

    def __init__(self, cfg: DetectionSettings) -> None:
        self.cfg = cfg
        self.rate = Band(cfg.ewma_alpha, cfg.z, cfg.min_error_rate, MIN_STD_RATE)
        self.latency = Band(cfg.ewma_alpha, cfg.z, cfg.latency_p95_floor_ms, MIN_STD_MS)

    def observe(self, s: Summary) -> Anomaly | None:
        if s.requests < self.cfg.min_requests:
            return None
        rate_limit, lat_limit = self.rate.upper(), self.latency.upper()
        bad_rate = self.rate.check(s.error_rate)
        bad_latency = self.latency.check(s.p95_ms)
        if bad_rate:
            return Anomaly("error_rate", s.error_rate, rate_limit, s)
        if bad_latency:
            return Anomaly("latency", s.p95_ms, lat_limit, s)
        return None
