"""Allocates until something gives: must end as a memory verdict, not take the host down."""


def evaluate(response):
    hoard = []
    while True:
        hoard.append(bytearray(16 * 1024 * 1024))
