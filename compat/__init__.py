"""The compatibility suite's support code: a real model server to run the gateway against."""
