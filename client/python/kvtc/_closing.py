"""Closing: the with-statement and garbage-collection ends of a handle that
owns a C object, for classes that define close() (Client, gpu.Profile,
gpu.Decoder). close() must be idempotent: __del__ may run after it."""


class Closing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        # Interpreter shutdown may have torn down what close() calls; a
        # finalizer has no one to raise to.
        try:
            self.close()
        except Exception:
            pass
