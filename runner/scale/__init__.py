"""Where a run's work goes: devices and processes (data parallel), parallel and cluster launchers."""
