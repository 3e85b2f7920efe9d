"""The plugin is tested through pytester: a real inner pytest session per test."""

