"""The one exception type for problems the user can fix; the CLI prints it as one line, exit code 2."""


class StargateError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""


class FallbackNotice(UserWarning):
    """What the user should know and need not act on: a fast path that would be wrong for this model (the
    library's path is used instead), a run resumed with new execution settings. The CLI prints one line, once
    per message."""


class QuestionerFailure(StargateError):
    """The Questioner's server (questioner.engine vllm) could not answer after its client's retries, or died."""
