"""The ``adv2`` command line. Lives outside :mod:`adv2core` because ``adv2 run`` drives Prefect flows."""
