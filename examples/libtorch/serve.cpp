// Serve an AOTInductor package of a model with rnnkit's layers from C++, with libtorch and
// rnnkit's operator library only: no Python, no rnnkit package.
//
//   serve LIBRARY PACKAGE INPUTS OUTPUTS
//     LIBRARY  rnnkit's operator library: python -c "import rnnkit; print(rnnkit.library_path())"
//     PACKAGE  the .pt2 that `rnnkit export RUN --format aoti` (or torch._inductor's
//              aoti_compile_and_package) wrote
//     INPUTS   the model's inputs, a list of tensors written by torch.save([...]) in Python
//     OUTPUTS  where to write the outputs, a tuple of tensors that torch.load reads
//
// Build with build.sh beside this file (the torch wheel ships libtorch's headers and libraries).
#include <dlfcn.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/serialize.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <vector>

int main(int argc, char** argv) {
    if (argc != 5) {
        std::cerr << "usage: serve LIBRARY PACKAGE INPUTS OUTPUTS\n";
        return 2;
    }
    // rnnkit's operators (rnnkit::fused_rnn, ...) register themselves when the library loads
    if (dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL) == nullptr) {
        std::cerr << "cannot load rnnkit's operator library " << argv[1] << ": " << dlerror() << "\n";
        return 1;
    }
    try {
        torch::inductor::AOTIModelPackageLoader loader(argv[2]);
        std::ifstream in(argv[3], std::ios::binary);
        const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        const c10::IValue given = torch::pickle_load(bytes);  // (kept: the loop reads its list)
        std::vector<at::Tensor> inputs;
        for (const c10::IValue& value : given.toListRef()) inputs.push_back(value.toTensor());
        const std::vector<at::Tensor> outputs = loader.run(inputs);
        std::vector<c10::IValue> kept;
        for (const at::Tensor& out : outputs) {
            std::cout << "output " << kept.size() << ": " << out.sizes() << " " << out.scalar_type() << "\n";
            kept.push_back(out);
        }
        // a tuple: torch.load(..., weights_only=True) reads it (a list would carry a type tag)
        const std::vector<char> saved = torch::pickle_save(c10::ivalue::Tuple::create(std::move(kept)));
        std::ofstream(argv[4], std::ios::binary).write(saved.data(), static_cast<std::streamsize>(saved.size()));
    } catch (const std::exception& error) {
        std::cerr << error.what() << "\n";
        return 1;
    }
    return 0;
}
