"""The operator's commands beyond the handlers: `check` (the pre-flight before the first night) and `status`."""
