"""Pure measurement maths: statistics, stability, parity, corruptions, robustness. No I/O here."""
