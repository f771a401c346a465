#!/usr/bin/env bash
# Build llama.cpp's `llama-server` from the source that the installed llama-cpp-python vendors, and link it into
# the environment's bin/ (where stargate-lite looks for it). Run by `bash install.sh --llama-server`; on its own:
#     PYTHON=.venv/bin/python bash scripts/build-llama-server.sh
# The build (4 min 44 s on 2 cores, measured) is cached per llama-cpp-python version and CMAKE_ARGS under
# ${XDG_CACHE_HOME:-~/.cache}/stargate-lite/llama-server, so reinstalls reuse it. CUDA: CMAKE_ARGS="-DGGML_CUDA=on".
set -euo pipefail
python=${PYTHON:-python}
version=$("$python" -c "import importlib.metadata as m; print(m.version('llama_cpp_python'))")
cmake_args="${CMAKE_ARGS:--DGGML_NATIVE=off}"
key=$(printf '%s' "$version $cmake_args" | sha256sum | cut -c1-12)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/stargate-lite/llama-server/$version-$key"
bin_dir=$("$python" -c "import sys, os; print(os.path.join(sys.prefix, 'bin'))")
if [[ ! -x "$cache/llama-server" ]]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "building llama-server $version ($cmake_args) in $work; cached in $cache"
    "$python" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work"
    tar xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
    # A static, self-contained binary with nothing fetched at build time (no web UI download, no HTTPS).
    # shellcheck disable=SC2086
    cmake -S "$work"/llama_cpp_python-*/vendor/llama.cpp -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
        $cmake_args >"$work/cmake.log" || { tail -20 "$work/cmake.log"; exit 1; }
    cmake --build "$work/build" --target llama-server -j"$(nproc)" >"$work/build.log" 2>&1 \
        || { tail -30 "$work/build.log"; exit 1; }
    mkdir -p "$cache"
    cp "$work/build/bin/llama-server" "$cache/llama-server.tmp" && mv "$cache/llama-server.tmp" "$cache/llama-server"
fi
ln -sf "$cache/llama-server" "$bin_dir/llama-server"
echo "llama-server $version: $bin_dir/llama-server -> $cache/llama-server"
