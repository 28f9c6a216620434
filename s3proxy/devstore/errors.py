"""S3 errors of the development store, rendered as S3 XML by the server."""

from __future__ import annotations


class S3Error(Exception):
    """An S3 error response: ``<Error><Code>`` ``code`` with HTTP ``status``.

    ``extra`` holds additional elements of the error document (``Key``,
    ``BucketName``, ``UploadId``...), ``headers`` additional response headers.
    """

    def __init__(
        self,
        code: str,
        message: str,
        status: int = 400,
        *,
        extra: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})


def no_such_bucket(bucket: str) -> S3Error:
    return S3Error("NoSuchBucket", "The specified bucket does not exist", 404, extra={"BucketName": bucket})


def no_such_key(key: str) -> S3Error:
    return S3Error("NoSuchKey", "The specified key does not exist.", 404, extra={"Key": key})


def no_such_version(key: str, version_id: str) -> S3Error:
    return S3Error(
        "NoSuchVersion",
        "The specified version does not exist.",
        404,
        extra={"Key": key, "VersionId": version_id},
    )


def no_such_upload(upload_id: str) -> S3Error:
    return S3Error(
        "NoSuchUpload",
        "The specified upload does not exist. The upload ID may be invalid, "
        "or the upload may have been aborted or completed.",
        404,
        extra={"UploadId": upload_id},
    )


def malformed_xml() -> S3Error:
    return S3Error(
        "MalformedXML",
        "The XML you provided was not well-formed or did not validate against our published schema",
        400,
    )


def invalid_argument(message: str, name: str | None = None, value: str | None = None) -> S3Error:
    extra = {}
    if name is not None:
        extra["ArgumentName"] = name
        extra["ArgumentValue"] = value if value is not None else ""
    return S3Error("InvalidArgument", message, 400, extra=extra)


def precondition_failed(condition: str) -> S3Error:
    return S3Error(
        "PreconditionFailed",
        "At least one of the pre-conditions you specified did not hold",
        412,
        extra={"Condition": condition},
    )
