"""s3proxy's benchmark program (issue 6): ``python -m bench --quick | --full``.

- ``origins``: the null S3 origin, rclone / moto / devstore origins, s3proxy
  and the rclone crypt peer as processes, and the /proc figures (CPU, RSS).
- ``loadgen``: the aiohttp SigV4 load generator, and boto3.
- ``workloads``: large PUT/GET, multipart, ranged GET, small objects, LIST,
  key-service calls, the single-core crypto ceiling.
- ``report`` and ``png``: markdown tables, target checks, the PNG chart.

Not part of the test suite; results go to ``bench/out/`` and ``bench/RESULTS.md``.
"""
