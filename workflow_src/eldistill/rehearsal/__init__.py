"""Stand-ins of the published files (teachers, datasets, detector, statistics) for the rehearsal of the paper grid."""
