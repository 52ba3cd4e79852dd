"""Rows in, token ids out: reading raw rows, parsing them through a dataset format, and encoding
them the way TRL's DPO trainer does. No Axolotl."""
