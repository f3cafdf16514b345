# Compiler launcher and warnings shared by every rmgen target.
find_program(RMGEN_CCACHE ccache)
if(RMGEN_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  # Precompiled headers need these sloppiness settings to be cacheable.
  set(CMAKE_CXX_COMPILER_LAUNCHER
      ${CMAKE_COMMAND} -E env "CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime"
      ${RMGEN_CCACHE})
  message(STATUS "rmgen: using ccache (${RMGEN_CCACHE})")
endif()

# Warnings for rmgen's own code; -Werror=switch makes a switch that misses a model family,
# template or job kind a build error.
add_library(rmgen_warnings INTERFACE)
target_compile_options(rmgen_warnings INTERFACE -Wall -Wextra -Wno-unused-parameter
                       -Werror=switch -Werror=return-type)
