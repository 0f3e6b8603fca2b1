# -*- test-case-name: metaproxy.test.test_operator -*-
"""
The result of the last configuration reload, for
C{metaproxy_config_last_reload_successful} and
C{metaproxy_config_last_reload_success_timestamp_seconds} (as Prometheus
exports for its own config).

A reload is every re-read of C{--config} while running: SIGHUP (which
applies C{logging.level}) and SIGUSR2 (a hot upgrade starts only on a
valid file). Loading the config at start-up counts as the first successful
one.
"""

import attrs


@attrs.define(eq=False)
class ConfigReloads:
    """
    Whether the last reload of the config succeeded, and when the last
    successful one (or the start) happened.

    @ivar clock: an L{IReactorTime}: C{seconds()} is the Unix time.
    """

    clock: object
    successful: bool = attrs.field(init=False, default=True)
    last_success: float = attrs.field(init=False, default=0.0)
    failures: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self):
        self.last_success = self.clock.seconds()

    def record(self, ok):
        """
        Note one reload's result. Plain assignments: callable from the
        thread that read the file.
        """
        if ok:
            self.successful = True
            self.last_success = self.clock.seconds()
        else:
            self.successful = False
            self.failures += 1

    def recording(self, load):
        """
        @param load: C{callable(path) -> Config} (raises for a bad file).
        @return: the same callable, recording each call's result here.
        """

        def load_and_record(path):
            try:
                config = load(path)
            except BaseException:
                self.record(False)
                raise
            self.record(True)
            return config

        return load_and_record

    def watch(self, metrics):
        """Export the result on a L{metaproxy.ops.metrics.Metrics}."""
        metrics.watch_gauges(
            "metaproxy_config_last_reload_successful",
            "1 if the last reload of the config file (SIGHUP, SIGUSR2) read a valid file, else 0.",
            None, lambda: 1.0 if self.successful else 0.0,
        )
        metrics.watch_gauges(
            "metaproxy_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config reload (or of the start).",
            None, lambda: self.last_success,
        )
