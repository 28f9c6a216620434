"""The S3 protocol, pure: SigV4/SigV2 canonicalisation, signing and verification, aws-chunked
framing, checksums, ranges, S3 errors and XML (a safe parser and response builders).

No I/O.  Imported by the proxy (``s3proxy.http``), the backend client, the embedded
store and the tools; imports nothing of s3proxy but ``s3proxy.aws`` itself.
"""
